//! The role-by-call table: for every RPC, what kind of access it is and which roles may make it.
//!
//! This table is the single source of truth for who may call what. A test checks that every RPC
//! in the protobuf contracts has exactly one row, and the server refuses a call with no row.
//! The internal [`Role::Service`] identity may make every call: services act on behalf of a
//! caller whose own access was checked where the request entered rollcall.

use crate::role::Role;
use crate::role::Role::{
    Auditor, ClassTeacherOrTutor, DelegatedStaff, HeadOfYear, Headteacher,
    LocalAuthorityAttendanceOfficer, MisVendor, OfficeStaff, SeniorAttendanceLead,
    TrustAttendanceImprovementOfficer, TrustIt,
};

/// What a call does with the records it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads settings or figures that identify no pupil: schools, calendars, policies.
    Reference,
    /// Reads one or more pupils' records. Audited when a person makes the call.
    PupilRead,
    /// Changes records. Always audited.
    Write,
    /// Streams a change feed to another service or an MIS.
    Feed,
}

impl Access {
    /// The name used in audit records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Reference => "reference",
            Access::PupilRead => "pupil_read",
            Access::Write => "write",
            Access::Feed => "feed",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The call, as `package.Service/Method`.
    pub method: &'static str,
    /// What it does.
    pub access: Access,
    /// The roles that may make it, besides [`Role::Service`].
    pub roles: &'static [Role],
}

impl Rule {
    /// True when `role` may make this call.
    pub fn allows(&self, role: Role) -> bool {
        role == Role::Service || self.roles.contains(&role)
    }
}

/// Every authenticated role that is not internal.
const EVERYONE: &[Role] = &[
    Headteacher,
    DelegatedStaff,
    SeniorAttendanceLead,
    HeadOfYear,
    ClassTeacherOrTutor,
    OfficeStaff,
    TrustAttendanceImprovementOfficer,
    TrustIt,
    MisVendor,
    LocalAuthorityAttendanceOfficer,
    Auditor,
];
/// Staff of a school, the trust's officer and the auditor: settings and figures.
const STAFF_REFERENCE: &[Role] = &[
    Headteacher,
    DelegatedStaff,
    SeniorAttendanceLead,
    HeadOfYear,
    ClassTeacherOrTutor,
    OfficeStaff,
    TrustAttendanceImprovementOfficer,
    TrustIt,
    Auditor,
];
/// Who reads pupils' registers and attendance.
const REGISTER_READERS: &[Role] = &[
    Headteacher,
    DelegatedStaff,
    SeniorAttendanceLead,
    HeadOfYear,
    ClassTeacherOrTutor,
    OfficeStaff,
    TrustAttendanceImprovementOfficer,
    Auditor,
];
/// Who takes or sends registers.
const REGISTER_TAKERS: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    HeadOfYear,
    ClassTeacherOrTutor,
    OfficeStaff,
    MisVendor,
];
/// Who changes a mark already in the register.
const MARK_AMENDERS: &[Role] = &[
    Headteacher,
    DelegatedStaff,
    SeniorAttendanceLead,
    OfficeStaff,
];
/// Who decides whether an absence is authorised: the headteacher and their delegates.
const DECIDERS: &[Role] = &[Headteacher, DelegatedStaff];
/// Who records what parents report and what lesson checks find.
const REPORTERS: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    HeadOfYear,
    ClassTeacherOrTutor,
    OfficeStaff,
];
/// Who reads families' contact details.
const CONTACT_READERS: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    HeadOfYear,
    OfficeStaff,
    TrustAttendanceImprovementOfficer,
    Auditor,
];
/// Who keeps families' contact details.
const CONTACT_WRITERS: &[Role] = &[Headteacher, SeniorAttendanceLead, OfficeStaff, MisVendor];
/// Who replaces a pupil's UPN, moving their history to the new one.
const UPN_CHANGERS: &[Role] = &[Headteacher, SeniorAttendanceLead, OfficeStaff, TrustIt];
/// Who sets a school's calendar.
const CALENDAR_WRITERS: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    OfficeStaff,
    TrustIt,
    MisVendor,
];
/// Who reads casework.
const CASE_READERS: &[Role] = &[
    Headteacher,
    DelegatedStaff,
    SeniorAttendanceLead,
    HeadOfYear,
    TrustAttendanceImprovementOfficer,
    Auditor,
];
/// Who works cases.
const CASE_WORKERS: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    HeadOfYear,
    TrustAttendanceImprovementOfficer,
];
/// Who reads contact with families: messages, first-day tasks and letters.
const FAMILY_CONTACT_READERS: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    HeadOfYear,
    OfficeStaff,
    TrustAttendanceImprovementOfficer,
    Auditor,
];
/// Who contacts families.
const FAMILY_CONTACTERS: &[Role] = &[Headteacher, SeniorAttendanceLead, HeadOfYear, OfficeStaff];
/// Who writes trust-wide settings: policies, ladders and templates.
const TRUST_SETTINGS: &[Role] = &[TrustAttendanceImprovementOfficer, TrustIt];
/// Who refers pupils to the local authority.
const REFERRERS: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    TrustAttendanceImprovementOfficer,
];
/// Who reads referrals: the referrers, the auditor and the local authority they were sent to.
const REFERRAL_READERS: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    TrustAttendanceImprovementOfficer,
    LocalAuthorityAttendanceOfficer,
    Auditor,
];
/// Who records the local authority's answer.
const OUTCOME_RECORDERS: &[Role] = &[
    SeniorAttendanceLead,
    TrustAttendanceImprovementOfficer,
    LocalAuthorityAttendanceOfficer,
];
/// Who sends packs and follows their delivery.
const DELIVERERS: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    TrustAttendanceImprovementOfficer,
    TrustIt,
];
/// Who reads delivery, connector and write-back records.
const OPERATIONS_READERS: &[Role] = &[
    SeniorAttendanceLead,
    TrustAttendanceImprovementOfficer,
    TrustIt,
    Auditor,
];
/// Who runs the trust's systems.
const OPERATORS: &[Role] = &[TrustIt];
/// Who sends an MIS's data through the sync API.
const SYNC_CLIENTS: &[Role] = &[MisVendor, TrustIt];
/// Who follows a change feed besides the services.
const FEED_READERS: &[Role] = &[MisVendor];
/// Who imports files from an MIS.
const FILE_IMPORTERS: &[Role] = &[SeniorAttendanceLead, OfficeStaff, TrustIt, MisVendor];
/// The trust's own oversight of figures across schools.
const ATTENDANCE_READERS: &[Role] = &[
    Headteacher,
    DelegatedStaff,
    SeniorAttendanceLead,
    HeadOfYear,
    ClassTeacherOrTutor,
    OfficeStaff,
    TrustAttendanceImprovementOfficer,
    Auditor,
];
/// Who gives rewards.
const REWARDERS: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    HeadOfYear,
    ClassTeacherOrTutor,
];
/// Who checks in with a pupil returning to school.
const CHECK_IN: &[Role] = &[
    Headteacher,
    SeniorAttendanceLead,
    HeadOfYear,
    ClassTeacherOrTutor,
    TrustAttendanceImprovementOfficer,
];
/// Readers of the audit log: the auditor, and trust IT, who runs the systems that keep it.
const AUDIT_READERS: &[Role] = &[TrustIt, Auditor];

const fn rule(method: &'static str, access: Access, roles: &'static [Role]) -> Rule {
    Rule {
        method,
        access,
        roles,
    }
}

use Access::{Feed, PupilRead, Reference, Write};

/// The table, grouped by service.
pub const RULES: &[Rule] = &[
    // Registers.
    rule(
        "rollcall.registers.v1.RegistersService/ImportRegister",
        Write,
        REGISTER_TAKERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/SetCalendar",
        Write,
        CALENDAR_WRITERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/GetCalendar",
        Reference,
        EVERYONE,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/GetSchool",
        Reference,
        EVERYONE,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ListSchools",
        Reference,
        EVERYONE,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ListPupils",
        PupilRead,
        REGISTER_READERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/GetPupil",
        PupilRead,
        REGISTER_READERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/GetSessionRegister",
        PupilRead,
        &[
            Headteacher,
            DelegatedStaff,
            SeniorAttendanceLead,
            HeadOfYear,
            ClassTeacherOrTutor,
            OfficeStaff,
            TrustAttendanceImprovementOfficer,
            MisVendor,
            Auditor,
        ],
    ),
    rule(
        "rollcall.registers.v1.RegistersService/RecordLeaving",
        Write,
        &[Headteacher, SeniorAttendanceLead, OfficeStaff, MisVendor],
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ApplyRetention",
        Write,
        OPERATORS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ListMarks",
        PupilRead,
        REGISTER_READERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/AmendMark",
        Write,
        MARK_AMENDERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/RecordAbsenceReport",
        Write,
        REPORTERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ListAbsenceReports",
        PupilRead,
        REGISTER_READERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/RecordLessonCheck",
        Write,
        REPORTERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ListTruancyFlags",
        PupilRead,
        REGISTER_READERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ListMarkVersions",
        PupilRead,
        REGISTER_READERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ListMissingMarks",
        PupilRead,
        REGISTER_READERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ListUnresolvedMarks",
        PupilRead,
        REGISTER_READERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/WatchMarks",
        Feed,
        FEED_READERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/SetPupilContacts",
        Write,
        CONTACT_WRITERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ChangeUpn",
        Write,
        UPN_CHANGERS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ListUpnChanges",
        Feed,
        OPERATORS,
    ),
    rule(
        "rollcall.registers.v1.RegistersService/ListPupilContacts",
        PupilRead,
        CONTACT_READERS,
    ),
    // Policy.
    rule(
        "rollcall.policy.v1.PolicyService/GetPolicy",
        Reference,
        EVERYONE,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/LoadPolicy",
        Write,
        TRUST_SETTINGS,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/ListPolicies",
        Reference,
        EVERYONE,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/AssignPolicy",
        Write,
        TRUST_SETTINGS,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/ListPolicyAssignments",
        Reference,
        EVERYONE,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/DecideAbsence",
        Write,
        DECIDERS,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/GetSchoolAttendance",
        PupilRead,
        ATTENDANCE_READERS,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/GetPupilAttendance",
        PupilRead,
        ATTENDANCE_READERS,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/GetAttendanceStatistics",
        Reference,
        STAFF_REFERENCE,
    ),
    rule("rollcall.policy.v1.PolicyService/WatchTriggers", Feed, &[]),
    rule(
        "rollcall.policy.v1.PolicyService/GetSyncState",
        Reference,
        EVERYONE,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/GetPenaltyNoticeTerms",
        Reference,
        EVERYONE,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/ListRewards",
        PupilRead,
        ATTENDANCE_READERS,
    ),
    rule(
        "rollcall.policy.v1.PolicyService/CheckAggregates",
        Reference,
        &[TrustAttendanceImprovementOfficer, TrustIt, Auditor],
    ),
    // Cases.
    rule(
        "rollcall.cases.v1.CasesService/ListCases",
        PupilRead,
        CASE_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/GetSyncState",
        Reference,
        EVERYONE,
    ),
    rule(
        "rollcall.cases.v1.CasesService/OpenCase",
        Write,
        CASE_WORKERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/EscalateCase",
        Write,
        CASE_WORKERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/DeescalateCase",
        Write,
        CASE_WORKERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/CloseCase",
        Write,
        CASE_WORKERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/KeepCaseOpen",
        Write,
        CASE_WORKERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/RecordAction",
        Write,
        CASE_WORKERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ListOverdueReviews",
        PupilRead,
        CASE_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/GetCaseTimeline",
        PupilRead,
        CASE_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ListLadders",
        Reference,
        STAFF_REFERENCE,
    ),
    rule(
        "rollcall.cases.v1.CasesService/LoadLadder",
        Write,
        TRUST_SETTINGS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/CreatePlan",
        Write,
        CASE_WORKERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ReviewPlan",
        Write,
        CASE_WORKERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ListPlans",
        PupilRead,
        CASE_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/RecordTruancyIncident",
        Write,
        REPORTERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ListTruancyIncidents",
        PupilRead,
        CASE_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/RecordReward",
        Write,
        REWARDERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ListGivenRewards",
        PupilRead,
        ATTENDANCE_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/CreateReintegration",
        Write,
        CASE_WORKERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/RecordCheckIn",
        Write,
        CHECK_IN,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ListReintegrations",
        PupilRead,
        CASE_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/RunFirstDayContact",
        Write,
        FAMILY_CONTACTERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ListContactTasks",
        PupilRead,
        FAMILY_CONTACT_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/CompleteContactTask",
        Write,
        FAMILY_CONTACTERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ListMessages",
        PupilRead,
        FAMILY_CONTACT_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ResendMessage",
        Write,
        FAMILY_CONTACTERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ListTemplates",
        Reference,
        STAFF_REFERENCE,
    ),
    rule(
        "rollcall.cases.v1.CasesService/LoadTemplate",
        Write,
        TRUST_SETTINGS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/CreateLetter",
        Write,
        FAMILY_CONTACTERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ReviewLetter",
        Write,
        &[
            Headteacher,
            SeniorAttendanceLead,
            TrustAttendanceImprovementOfficer,
        ],
    ),
    rule(
        "rollcall.cases.v1.CasesService/GetLetterDocument",
        PupilRead,
        FAMILY_CONTACT_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/GetReferralEvidence",
        PupilRead,
        CASE_READERS,
    ),
    rule(
        "rollcall.cases.v1.CasesService/ApplyCaseRetention",
        Write,
        OPERATORS,
    ),
    // Referrals.
    rule(
        "rollcall.referrals.v1.ReferralsService/BuildReferralPack",
        PupilRead,
        REFERRERS,
    ),
    rule(
        "rollcall.referrals.v1.ReferralsService/CreateReferral",
        Write,
        REFERRERS,
    ),
    rule(
        "rollcall.referrals.v1.ReferralsService/GetReferral",
        PupilRead,
        REFERRAL_READERS,
    ),
    rule(
        "rollcall.referrals.v1.ReferralsService/ListReferrals",
        PupilRead,
        REFERRAL_READERS,
    ),
    rule(
        "rollcall.referrals.v1.ReferralsService/SubmitReferral",
        Write,
        REFERRERS,
    ),
    rule(
        "rollcall.referrals.v1.ReferralsService/RecordReferralOutcome",
        Write,
        OUTCOME_RECORDERS,
    ),
    rule(
        "rollcall.referrals.v1.ReferralsService/GetReferralPack",
        PupilRead,
        REFERRAL_READERS,
    ),
    // MIS adapter.
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/ImportCtf",
        Write,
        FILE_IMPORTERS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/DeliverReferralPack",
        Write,
        DELIVERERS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/ListDeliveries",
        Reference,
        OPERATIONS_READERS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/RetryDelivery",
        Write,
        DELIVERERS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/ListConnectors",
        Reference,
        OPERATIONS_READERS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/RunConnector",
        Write,
        OPERATORS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/ListConnectorRuns",
        Reference,
        OPERATIONS_READERS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/ListConnectorDeletions",
        PupilRead,
        OPERATIONS_READERS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/ListWritebackJobs",
        PupilRead,
        OPERATIONS_READERS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/GetWritebackJob",
        PupilRead,
        OPERATIONS_READERS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisAdapterService/RetryWritebackJob",
        Write,
        OPERATORS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisSyncService/SyncPupils",
        Write,
        SYNC_CLIENTS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisSyncService/SyncCalendar",
        Write,
        SYNC_CLIENTS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisSyncService/SyncMarks",
        Write,
        SYNC_CLIENTS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisSyncService/StreamSync",
        Write,
        SYNC_CLIENTS,
    ),
    rule(
        "rollcall.mis_adapter.v1.MisSyncService/ListPupilIds",
        PupilRead,
        SYNC_CLIENTS,
    ),
    // Audit log. Its events name pupils, so a list is a read of pupils' records.
    rule(
        "rollcall.audit.v1.AuditService/ListAuditEvents",
        PupilRead,
        AUDIT_READERS,
    ),
    rule(
        "rollcall.audit.v1.AuditService/VerifyAuditLog",
        Reference,
        AUDIT_READERS,
    ),
];

/// Calls anyone may make without a token: health checks and the reflection service, which
/// describes the public contracts and no records.
pub fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// The rule for a request path such as `/rollcall.registers.v1.RegistersService/GetPupil`.
pub fn rule_for(path: &str) -> Option<&'static Rule> {
    let method = path.strip_prefix('/')?;
    RULES.iter().find(|rule| rule.method == method)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    /// Every RPC in the contracts, as `package.Service/Method`.
    fn contract_methods() -> BTreeSet<String> {
        let set = prost_types::FileDescriptorSet::decode(rollcall_api::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let mut methods = BTreeSet::new();
        for file in set.file {
            let package = file.package().to_owned();
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!("{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
        methods
    }

    #[test]
    fn every_rpc_has_exactly_one_rule() {
        let methods = contract_methods();
        assert!(
            methods.len() > 50,
            "the contracts list {} RPCs",
            methods.len()
        );
        let mut seen = BTreeSet::new();
        for rule in RULES {
            assert!(seen.insert(rule.method), "{} has two rules", rule.method);
            assert!(
                methods.contains(rule.method),
                "{} has a rule but is not in the contracts",
                rule.method
            );
        }
        let missing: Vec<_> = methods
            .iter()
            .filter(|method| !seen.contains(method.as_str()))
            .collect();
        assert!(missing.is_empty(), "RPCs with no access rule: {missing:?}");
    }

    #[test]
    fn the_auditor_changes_nothing() {
        for rule in RULES.iter().filter(|rule| rule.access == Access::Write) {
            assert!(
                !rule.allows(Role::Auditor),
                "the auditor may call {}",
                rule.method
            );
        }
    }

    #[test]
    fn audit_log_is_for_auditor_and_trust_it() {
        for method in ["ListAuditEvents", "VerifyAuditLog"] {
            let path = format!("/rollcall.audit.v1.AuditService/{method}");
            let rule = rule_for(&path).expect("a rule");
            let readers: Vec<_> = Role::ALL
                .into_iter()
                .filter(|role| rule.allows(*role))
                .collect();
            assert_eq!(
                readers,
                vec![Role::TrustIt, Role::Auditor, Role::Service],
                "{method}"
            );
        }
    }

    #[test]
    fn the_local_authority_sees_only_referrals() {
        for rule in RULES
            .iter()
            .filter(|rule| rule.allows(Role::LocalAuthorityAttendanceOfficer))
        {
            assert!(
                rule.access == Access::Reference || rule.method.contains("ReferralsService/"),
                "a local authority officer may call {}",
                rule.method
            );
        }
    }

    #[test]
    fn only_the_headteacher_and_delegates_decide_absence() {
        let decide = rule_for("/rollcall.policy.v1.PolicyService/DecideAbsence").expect("a rule");
        let deciders: Vec<_> = Role::ALL
            .into_iter()
            .filter(|role| decide.allows(*role))
            .collect();
        assert_eq!(
            deciders,
            vec![Role::Headteacher, Role::DelegatedStaff, Role::Service]
        );
    }

    #[test]
    fn an_mis_vendor_reads_no_casework() {
        for rule in RULES
            .iter()
            .filter(|rule| rule.allows(Role::MisVendor) && rule.access != Access::Reference)
        {
            assert!(
                !rule.method.contains("CasesService/")
                    && !rule.method.contains("ReferralsService/"),
                "an MIS vendor may call {}",
                rule.method
            );
        }
    }

    #[test]
    fn open_paths_and_unknown_paths() {
        assert!(is_open("/grpc.health.v1.Health/Check"));
        assert!(!is_open("/rollcall.registers.v1.RegistersService/GetPupil"));
        assert!(rule_for("/rollcall.registers.v1.RegistersService/Nothing").is_none());
        assert!(rule_for("rollcall.registers.v1.RegistersService/GetPupil").is_none());
    }
}
