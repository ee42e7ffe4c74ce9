//! The command line: options, subcommands and their output.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use comfy_table::{CellAlignment, Table, presets};

use crate::text::{count, figures_json};
use rollcall_api::cases::v1::{Case, CaseStatus, ListCasesRequest};
use rollcall_api::convert::from_timestamp;
use rollcall_api::mis_adapter::v1::ImportCtfRequest;
use rollcall_api::policy::v1::GetSchoolAttendanceRequest;
use rollcall_api::registers::v1::GetSchoolRequest;
use rollcall_runtime::limits;
use rollcall_runtime::telemetry::{self, LogFormat};
use rollcall_runtime::tls::TlsFiles;
use rollcall_runtime::{ServiceName, StorageConfig};
use serde_json::json;

use crate::calendar::CalendarCommand;
use crate::casework::{CaseCommand, LadderCommand};
use crate::client::{Addresses, Clients};
use crate::connector::ConnectorCommand;
use crate::contacts::ContactsCommand;
use crate::delivery::DeliveryCommand;
use crate::marks::MarksCommand;
use crate::messaging::{FirstDayCommand, LetterCommand, MessagesCommand, TemplateCommand};
use crate::policy::{AbsenceCommand, PolicyCommand};
use crate::pupil::PupilCommand;
use crate::referrals::{PackCommand, ReferralCommand};
use crate::server::{self, Authentication, ServerConfig};
use crate::writeback::WritebackCommand;
use rollcall_api::client::Credentials;

/// rollcall: attendance registers, policy decisions, casework and referrals for a trust's schools.
#[derive(Debug, Parser)]
#[command(name = "rollcall", version, about)]
pub struct Cli {
    /// The rollcall server the client commands talk to.
    #[arg(
        long,
        global = true,
        env = "ROLLCALL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,

    /// A file holding the access token the client commands send. Without it, the token is
    /// read from ROLLCALL_TOKEN, and without that none is sent (enough for `serve --dev`).
    #[arg(long, global = true, env = "ROLLCALL_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// The CA certificate (PEM) that signed the servers' certificates, for https:// addresses.
    /// Without it, the public web authorities are trusted. `serve` trusts it when calling the
    /// services of other processes.
    #[arg(long, global = true, env = "ROLLCALL_TLS_CA")]
    tls_ca: Option<PathBuf>,

    #[command(flatten)]
    services: ServiceAddresses,

    #[command(subcommand)]
    command: Command,
}

/// The addresses of single services. The client commands use them instead of --server for
/// those services; `serve --only` calls the services it does not host at them.
#[derive(Debug, Args, Default)]
struct ServiceAddresses {
    /// The address of the registers service, e.g. https://registers.rollcall.svc:50051.
    #[arg(long, global = true, env = "ROLLCALL_REGISTERS_URL")]
    registers_url: Option<String>,
    /// The address of the policy service.
    #[arg(long, global = true, env = "ROLLCALL_POLICY_URL")]
    policy_url: Option<String>,
    /// The address of the cases service.
    #[arg(long, global = true, env = "ROLLCALL_CASES_URL")]
    cases_url: Option<String>,
    /// The address of the referrals service.
    #[arg(long, global = true, env = "ROLLCALL_REFERRALS_URL")]
    referrals_url: Option<String>,
    /// The address of the MIS adapter service, which also serves the MIS sync API.
    #[arg(long, global = true, env = "ROLLCALL_MIS_ADAPTER_URL")]
    mis_adapter_url: Option<String>,
    /// The address of the audit log service.
    #[arg(long, global = true, env = "ROLLCALL_AUDIT_URL")]
    audit_url: Option<String>,
}

impl ServiceAddresses {
    fn by_service(&self) -> BTreeMap<ServiceName, String> {
        [
            (ServiceName::Registers, &self.registers_url),
            (ServiceName::Policy, &self.policy_url),
            (ServiceName::Cases, &self.cases_url),
            (ServiceName::Referrals, &self.referrals_url),
            (ServiceName::MisAdapter, &self.mis_adapter_url),
            (ServiceName::Audit, &self.audit_url),
        ]
        .into_iter()
        .filter_map(|(name, url)| url.clone().map(|url| (name, url)))
        .collect()
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the five services in one process on one port, or with --only some of them.
    Serve(ServeArgs),
    /// Apply the database migrations of every service, or of those --only names, and exit.
    Migrate(MigrateArgs),
    /// Import files from a school's management information system.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Attendance reports.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Cases for pupils of concern.
    #[command(subcommand)]
    Cases(CasesCommand),
    /// Work one case: open, record actions, escalate, de-escalate, close, timeline.
    #[command(subcommand)]
    Case(CaseCommand),
    /// Escalation ladders: list the ones in use, load an edited one.
    #[command(subcommand)]
    Ladder(LadderCommand),
    /// Session marks: their history and amendments.
    #[command(subcommand)]
    Marks(MarksCommand),
    /// School calendars: terms, closures, register times and time zone.
    #[command(subcommand)]
    Calendar(CalendarCommand),
    /// Referrals to the local authority: create, check, submit, record outcomes, write packs.
    #[command(subcommand)]
    Referral(ReferralCommand),
    /// Referral packs, offline: verify one, print the public key of a signing key.
    #[command(subcommand)]
    Pack(PackCommand),
    /// Attendance policies: show, check against the law, load, and move schools between them.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Decisions on absence under the policy in force.
    #[command(subcommand)]
    Absence(AbsenceCommand),
    /// One pupil: figures and thresholds with the clauses applied, or a change of UPN.
    #[command(subcommand)]
    Pupil(PupilCommand),
    /// Parents and carers: import them from a CSV file, list a pupil's.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// First-day response to absence: contact parents and open tasks for the office.
    #[command(subcommand, name = "first-day")]
    FirstDay(FirstDayCommand),
    /// Messages to parents and carers: their delivery, and resending.
    #[command(subcommand)]
    Messages(MessagesCommand),
    /// Message and letter templates: list, show, load an edited one.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Letters on a case: write, review, save the PDF.
    #[command(subcommand)]
    Letter(LetterCommand),
    /// Referral packs sent to the local authority: list deliveries, retry a failed one.
    #[command(subcommand)]
    Delivery(DeliveryCommand),
    /// Schools' MIS connectors: list them, run one now, its runs and the MIS's deletions.
    #[command(subcommand)]
    Connector(ConnectorCommand),
    /// Decisions written back to schools' MIS: list jobs, show one, retry a failed one.
    #[command(subcommand)]
    Writeback(WritebackCommand),
    /// Remove register sessions older than six years and closed cases past their retention
    /// period.
    #[command(subcommand)]
    Retention(crate::retention::RetentionCommand),
    /// The audit log: who changed or read which records, or was rejected, when and from where.
    /// `verify` checks that nothing in it was changed.
    Audit(crate::audit::AuditArgs),
    /// Run the whole main job on a generated trust in a fresh folder.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "ROLLCALL_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Folder for the SQLite databases, used when --database-url is not given.
    #[arg(long, env = "ROLLCALL_DATA_DIR", default_value = "./rollcall-data")]
    data_dir: PathBuf,
    /// PostgreSQL URL (postgres://user:password@host/database) to use instead of SQLite.
    #[arg(long, env = "ROLLCALL_DATABASE_URL")]
    database_url: Option<String>,
    /// Log format: text for people, json for log collectors.
    #[arg(long, env = "ROLLCALL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Messaging settings (TOML): the mail server, SMS provider, print folder, retries and
    /// first-day contact. Without it, letters go to the letters folder under --data-dir and
    /// email and text messages are not sent.
    #[arg(long, env = "ROLLCALL_MESSAGING")]
    messaging: Option<PathBuf>,
    /// Referral settings (TOML): school days a warning letter must precede a penalty-notice
    /// request, independent schools, and the pack signing key. Without it, the defaults apply
    /// and packs are signed with keys/pack-signing.pem under --data-dir, created on first start.
    #[arg(long, env = "ROLLCALL_REFERRALS")]
    referrals: Option<PathBuf>,
    /// Delivery settings (TOML): the folders and HTTPS endpoints referral packs are delivered
    /// to, and the retries. Without it, referral packs are not delivered.
    #[arg(long, env = "ROLLCALL_DELIVERY")]
    delivery: Option<PathBuf>,
    /// Connector settings (TOML): for each school, its MIS data broker, token file, poll
    /// interval, page size, request-rate limit and whether decisions are written back.
    /// Without it, no broker is pulled and nothing is written back.
    #[arg(long, env = "ROLLCALL_CONNECTORS")]
    connectors: Option<PathBuf>,
    /// Token settings (TOML): the identity provider's issuer, rollcall's audience, the key set
    /// file or address, the clock skew allowed and the claims that carry roles and schools.
    /// Every call except health checks must then carry a valid bearer token.
    #[arg(long, env = "ROLLCALL_AUTH", conflicts_with = "dev")]
    auth: Option<PathBuf>,
    /// Serve without authentication, for a demonstration on this machine: every caller may do
    /// everything. Only a loopback --listen address is accepted.
    #[arg(long)]
    dev: bool,
    /// Years a closed case is kept after its last event before case retention removes it.
    #[arg(
        long,
        env = "ROLLCALL_CASE_RETENTION_YEARS",
        default_value_t = rollcall_cases::DEFAULT_CASE_RETENTION_YEARS,
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    case_retention_years: u32,
    /// Host only these services (comma-separated: registers, policy, cases, referrals,
    /// mis-adapter, audit) and call the others at their --<service>-url addresses. Without
    /// it, every service runs in this process.
    #[arg(long, env = "ROLLCALL_ONLY", value_delimiter = ',')]
    only: Vec<ServiceName>,
    /// The server's certificate chain (PEM). With --tls-key, the listener serves TLS, and the
    /// certificate is also presented when calling the services of other processes.
    #[arg(long, env = "ROLLCALL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "ROLLCALL_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that signs the client certificates of rollcall's own services.
    /// A caller presenting one is taken to be another rollcall service, so this CA must issue
    /// certificates to nothing else.
    #[arg(long, env = "ROLLCALL_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// A second address, in plain text, that serves only gRPC health checks, for probes that
    /// cannot speak TLS, such as Kubernetes' own.
    #[arg(long, env = "ROLLCALL_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// OTLP/gRPC address of an OpenTelemetry collector to send spans and metrics to, for
    /// example http://127.0.0.1:4317. An https:// collector is trusted through --tls-ca, and
    /// receives this server's --tls-cert when it requests a client certificate. Without it nothing
    /// is exported. The service name is OTEL_SERVICE_NAME, or rollcall (rollcall-registers and
    /// the like with --only).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The largest gRPC message, in bytes, that each service accepts or sends, from 4 MiB to
    /// 1 GiB. A larger request gets RESOURCE_EXHAUSTED. See docs/limits.md.
    #[arg(
        long,
        env = "ROLLCALL_MAX_MESSAGE_BYTES",
        value_name = "BYTES",
        default_value_t = limits::DEFAULT_MAX_MESSAGE_BYTES as u64,
        value_parser = clap::value_parser!(u64)
            .range(limits::MIN_MESSAGE_BYTES as u64..=limits::MAX_MESSAGE_BYTES_LIMIT as u64)
    )]
    max_message_bytes: u64,
    /// The maximum number of rows in one MIS sync batch: SyncPupils, SyncMarks, and each batch
    /// of StreamSync. A larger batch gets INVALID_ARGUMENT and nothing is stored.
    #[arg(
        long,
        env = "ROLLCALL_MAX_BATCH_ROWS",
        value_name = "ROWS",
        default_value_t = limits::DEFAULT_MAX_BATCH_ROWS as u64,
        value_parser = clap::value_parser!(u64).range(1..=limits::MAX_BATCH_ROWS_LIMIT as u64)
    )]
    max_batch_rows: u64,
    /// The maximum number of pupils and marks, counted together, in one ImportRegister stream,
    /// which a CTF import sends whole. A larger import gets INVALID_ARGUMENT and nothing is
    /// stored.
    #[arg(
        long,
        env = "ROLLCALL_MAX_IMPORT_ITEMS",
        value_name = "ITEMS",
        default_value_t = limits::DEFAULT_MAX_IMPORT_ITEMS as u64,
        value_parser = clap::value_parser!(u64).range(1..=limits::MAX_IMPORT_ITEMS_LIMIT as u64)
    )]
    max_import_items: u64,
    /// Seconds a request may run before it ends with DEADLINE_EXCEEDED and its changes roll
    /// back. A client's shorter grpc-timeout applies instead. Streamed responses are not cut.
    #[arg(
        long,
        env = "ROLLCALL_REQUEST_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = limits::DEFAULT_REQUEST_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=limits::MAX_REQUEST_TIMEOUT.as_secs())
    )]
    request_timeout: u64,
    /// The maximum number of requests in flight. Further requests get UNAVAILABLE at once, with a
    /// hint to retry later. Health checks and calls between rollcall's services are not
    /// counted.
    #[arg(
        long,
        env = "ROLLCALL_MAX_CONCURRENT_REQUESTS",
        value_name = "REQUESTS",
        default_value_t = limits::DEFAULT_MAX_CONCURRENT_REQUESTS as u64,
        value_parser = clap::value_parser!(u64)
            .range(1..=limits::MAX_CONCURRENT_REQUESTS_LIMIT as u64)
    )]
    max_concurrent_requests: u64,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// Folder for the SQLite databases, used when --database-url is not given.
    #[arg(long, env = "ROLLCALL_DATA_DIR", default_value = "./rollcall-data")]
    data_dir: PathBuf,
    /// PostgreSQL URL (postgres://user:password@host/database) to use instead of SQLite.
    #[arg(long, env = "ROLLCALL_DATABASE_URL")]
    database_url: Option<String>,
    /// Migrate only these services (comma-separated, as for `serve --only`). The audit log is
    /// always migrated, because every service writes to it.
    #[arg(long, env = "ROLLCALL_ONLY", value_delimiter = ',')]
    only: Vec<ServiceName>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Import DfE Common Transfer Files. Each file is stored whole or not at all.
    Ctf {
        /// The files to import.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The name of the person or system importing, kept with every mark.
        #[arg(long, default_value = "rollcall import")]
        by: String,
        /// Check each file and print what importing it would change, storing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Import pupils and session marks from CSV exports of a school's MIS, read under a column
    /// profile. Rows that cannot be read or applied are rejected with their line; the others
    /// are applied.
    Csv(crate::csv_import::CsvArgs),
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Each pupil's attendance figures for a school, by the DfE rules.
    Attendance {
        /// The school: seven-digit LA number and establishment number, e.g. 9192001.
        #[arg(long)]
        school: String,
        /// Figures as of this date (YYYY-MM-DD); the default is the last date with marks.
        #[arg(long)]
        as_of: Option<String>,
        /// Print a JSON array, one object per pupil.
        #[arg(long)]
        json: bool,
    },
    /// Attendance statistics over a range for a school or the trust, optionally by group.
    Statistics(crate::statistics::StatisticsArgs),
    /// Pupils who earned a reward for excellent or much-improved attendance or punctuality.
    Rewards(crate::statistics::RewardsArgs),
    /// Pupils close to a threshold, with the sessions still to go before each.
    EarlyWarning(crate::statistics::EarlyWarningArgs),
    /// The annual report to a school's local governing body, as a PDF and a CSV.
    Governors(crate::reports::GovernorsArgs),
    /// The trust's report for the academic year to a date, as a PDF and a CSV.
    Trust(crate::reports::TrustArgs),
}

#[derive(Debug, Subcommand)]
enum CasesCommand {
    /// List open cases and those up for review.
    List {
        /// The school: seven-digit LAESTAB, e.g. 9192001.
        #[arg(long)]
        school: String,
        /// Print a JSON array, one object per case.
        #[arg(long)]
        json: bool,
    },
}

/// How long an import waits for figures and cases to catch up.
pub(crate) const SYNC_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = match cli.command {
        Command::Serve(args) => return serve(args, cli.tls_ca, cli.services).await,
        Command::Migrate(args) => return migrate(args).await,
        Command::Pack(command) => {
            let stdout = std::io::stdout();
            let valid = crate::referrals::run_pack(command, &mut stdout.lock())?;
            if !valid {
                bail!("the pack is not valid: a check failed or could not be made");
            }
            return Ok(());
        }
        Command::Demo(args) => {
            // The generated trust has no parents' contacts, so every automatic letter is
            // recorded on its case as not written; those warnings would bury the output.
            telemetry::init(
                LogFormat::Text,
                "warn,sqlx=error,rollcall_cases::messaging::letters=error",
            );
            return crate::demo::run(args).await;
        }
        Command::Import(command) => ClientCommand::Import(command),
        Command::Report(command) => ClientCommand::Report(command),
        Command::Cases(command) => ClientCommand::Cases(command),
        Command::Case(command) => ClientCommand::Case(command),
        Command::Ladder(command) => ClientCommand::Ladder(command),
        Command::Marks(command) => ClientCommand::Marks(command),
        Command::Calendar(command) => ClientCommand::Calendar(command),
        Command::Referral(command) => ClientCommand::Referral(command),
        Command::Policy(command) => {
            if let Some(result) = crate::policy::run_local(&command, &mut std::io::stdout().lock())
            {
                return result;
            }
            ClientCommand::Policy(command)
        }
        Command::Absence(command) => ClientCommand::Absence(command),
        Command::Pupil(command) => ClientCommand::Pupil(command),
        Command::Contacts(command) => ClientCommand::Contacts(command),
        Command::FirstDay(command) => ClientCommand::FirstDay(command),
        Command::Messages(command) => ClientCommand::Messages(command),
        Command::Template(command) => ClientCommand::Template(command),
        Command::Letter(command) => ClientCommand::Letter(command),
        Command::Delivery(command) => ClientCommand::Delivery(command),
        Command::Connector(command) => ClientCommand::Connector(command),
        Command::Writeback(command) => ClientCommand::Writeback(command),
        Command::Retention(command) => ClientCommand::Retention(command),
        Command::Audit(args) => ClientCommand::Audit(args),
    };

    telemetry::init(LogFormat::Text, "warn,sqlx=error");
    let credentials = credentials(cli.token_file.as_deref())?;
    let addresses = Addresses {
        server: cli.server,
        services: cli.services.by_service(),
        tls_ca: cli.tls_ca,
    };
    let clients = Clients::connect(&addresses, credentials).await?;
    let mut out = std::io::stdout().lock();
    match client {
        ClientCommand::Import(ImportCommand::Ctf { files, by, dry_run }) => {
            import_ctf(&clients, &files, &by, dry_run, &mut out).await
        }
        ClientCommand::Import(ImportCommand::Csv(args)) => {
            crate::csv_import::run(&clients, args, &mut out).await
        }
        ClientCommand::Report(ReportCommand::Attendance {
            school,
            as_of,
            json,
        }) => report_attendance(&clients, &school, as_of.as_deref(), json, &mut out).await,
        ClientCommand::Report(ReportCommand::Statistics(args)) => {
            crate::statistics::run(&clients, args, &mut out).await
        }
        ClientCommand::Report(ReportCommand::Rewards(args)) => {
            crate::statistics::run_rewards(&clients, args, &mut out).await
        }
        ClientCommand::Report(ReportCommand::EarlyWarning(args)) => {
            crate::statistics::run_early_warning(&clients, args, &mut out).await
        }
        ClientCommand::Report(ReportCommand::Governors(args)) => {
            crate::reports::run_governors(&clients, args, &mut out).await
        }
        ClientCommand::Report(ReportCommand::Trust(args)) => {
            crate::reports::run_trust(&clients, args, &mut out).await
        }
        ClientCommand::Cases(CasesCommand::List { school, json }) => {
            list_cases(&clients, &school, json, &mut out).await
        }
        ClientCommand::Case(command) => crate::casework::run(&clients, command, &mut out).await,
        ClientCommand::Ladder(command) => {
            crate::casework::run_ladder(&clients, command, &mut out).await
        }
        ClientCommand::Marks(command) => crate::marks::run(&clients, command, &mut out).await,
        ClientCommand::Calendar(command) => crate::calendar::run(&clients, command, &mut out).await,
        ClientCommand::Policy(command) => crate::policy::run(&clients, command, &mut out).await,
        ClientCommand::Absence(command) => {
            crate::policy::run_absence(&clients, command, &mut out).await
        }
        ClientCommand::Pupil(command) => crate::pupil::run(&clients, command, &mut out).await,
        ClientCommand::Contacts(command) => crate::contacts::run(&clients, command, &mut out).await,
        ClientCommand::FirstDay(command) => {
            crate::messaging::run_first_day(&clients, command, &mut out).await
        }
        ClientCommand::Messages(command) => {
            crate::messaging::run_messages(&clients, command, &mut out).await
        }
        ClientCommand::Template(command) => {
            crate::messaging::run_template(&clients, command, &mut out).await
        }
        ClientCommand::Letter(command) => {
            crate::messaging::run_letter(&clients, command, &mut out).await
        }
        ClientCommand::Referral(command) => {
            crate::referrals::run_referral(&clients, command, &mut out).await
        }
        ClientCommand::Delivery(command) => crate::delivery::run(&clients, command, &mut out).await,
        ClientCommand::Connector(command) => {
            crate::connector::run(&clients, command, &mut out).await
        }
        ClientCommand::Writeback(command) => {
            crate::writeback::run(&clients, command, &mut out).await
        }
        ClientCommand::Retention(command) => {
            crate::retention::run(&clients, command, &mut out).await
        }
        ClientCommand::Audit(args) => crate::audit::run(&clients, args, &mut out).await,
    }
}

/// The commands that talk to a running server.
enum ClientCommand {
    Import(ImportCommand),
    Report(ReportCommand),
    Cases(CasesCommand),
    Case(CaseCommand),
    Ladder(LadderCommand),
    Marks(MarksCommand),
    Calendar(CalendarCommand),
    Referral(ReferralCommand),
    Policy(PolicyCommand),
    Absence(AbsenceCommand),
    Pupil(PupilCommand),
    Contacts(ContactsCommand),
    FirstDay(FirstDayCommand),
    Messages(MessagesCommand),
    Template(TemplateCommand),
    Letter(LetterCommand),
    Delivery(DeliveryCommand),
    Connector(ConnectorCommand),
    Writeback(WritebackCommand),
    Retention(crate::retention::RetentionCommand),
    Audit(crate::audit::AuditArgs),
}

async fn serve(
    args: ServeArgs,
    tls_ca: Option<PathBuf>,
    services: ServiceAddresses,
) -> anyhow::Result<()> {
    let format = if args.log_format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    let tls = TlsFiles {
        cert: args.tls_cert,
        key: args.tls_key,
        client_ca: args.tls_client_ca,
        ca: tls_ca,
    };
    let export = match args
        .otlp_endpoint
        .as_deref()
        .filter(|endpoint| !endpoint.trim().is_empty())
    {
        Some(endpoint) => {
            // In distributed mode each process reports under the first service it hosts.
            let service_name = match args.only.first() {
                Some(service) => format!("{}-{service}", telemetry::DEFAULT_SERVICE_NAME),
                None => telemetry::DEFAULT_SERVICE_NAME.to_owned(),
            };
            let mut export = telemetry::OtlpExport::new(endpoint, &service_name);
            if export.endpoint.starts_with("https://") {
                // The collector is reached like the other services: trusting --tls-ca, and
                // presenting this server's certificate when it has one.
                export.tls = Some(tls.load()?.client_config());
            }
            Some(export)
        }
        None => None,
    };
    telemetry::init_with_export(format, "info,sqlx=warn", export.as_ref())?;
    let mut config = ServerConfig::new(args.listen, args.data_dir, args.database_url.as_deref())?;
    config.case_retention_years = args.case_retention_years;
    config.only = args.only.iter().copied().collect();
    config.peer_urls = services.by_service();
    config.health_listen = args.health_listen;
    // clap has checked each value's range, so every value fits in usize.
    config.limits = limits::ServerLimits {
        max_message_bytes: usize::try_from(args.max_message_bytes)?,
        max_batch_rows: usize::try_from(args.max_batch_rows)?,
        max_import_items: usize::try_from(args.max_import_items)?,
        request_timeout: Duration::from_secs(args.request_timeout),
        max_concurrent_requests: usize::try_from(args.max_concurrent_requests)?,
    };
    config.tls = tls;
    config.authentication = match (&args.auth, args.dev) {
        (Some(path), _) => Authentication::Tokens(rollcall_auth::TokenSettings::from_file(path)?),
        (None, true) => Authentication::Development,
        (None, false) => bail!(
            "no token settings: give --auth FILE (or ROLLCALL_AUTH) so callers are checked \
             against the trust's identity provider, or --dev to try rollcall on this machine \
             without authentication; see docs/security.md"
        ),
    };
    if let Some(path) = &args.messaging {
        config.messaging = rollcall_cases::MessagingConfig::from_file(path)?;
    }
    if let Some(path) = &args.referrals {
        config.referrals = rollcall_referrals::ReferralsConfig::from_file(path)?;
    }
    if let Some(path) = &args.delivery {
        config.delivery = rollcall_mis_adapter::DeliveryConfig::from_file(path)?;
    }
    if let Some(path) = &args.connectors {
        config.connectors = rollcall_mis_adapter::ConnectorsConfig::from_file(path)?;
    }
    let mut running = server::start(config).await?;
    tokio::select! {
        () = rollcall_runtime::shutdown::signal() => {
            running.stop().await?;
            tracing::info!("rollcall stopped");
            Ok(())
        }
        result = running.wait() => result,
    }
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    telemetry::init(LogFormat::Text, "warn,sqlx=error");
    let storage = StorageConfig::from_options(args.database_url.as_deref(), args.data_dir)?;
    let mut only: BTreeSet<ServiceName> = args.only.iter().copied().collect();
    if only.is_empty() {
        only = ServiceName::ALL.into_iter().collect();
    }
    only.insert(ServiceName::Audit);
    let mut migrated = Vec::new();
    for service in only {
        let migrations = match service {
            ServiceName::Registers => rollcall_registers::MIGRATIONS,
            ServiceName::Policy => rollcall_policy::MIGRATIONS,
            ServiceName::Cases => rollcall_cases::MIGRATIONS,
            ServiceName::Referrals => rollcall_referrals::MIGRATIONS,
            ServiceName::MisAdapter => rollcall_mis_adapter::MIGRATIONS,
            ServiceName::Audit => rollcall_audit::MIGRATIONS,
        };
        let db = rollcall_runtime::storage::connect(&storage, migrations).await?;
        let version = rollcall_runtime::storage::latest_version(&db).await?;
        db.close().await;
        migrated.push((service, version));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let services: Vec<serde_json::Value> = migrated
            .iter()
            .map(|(service, version)| {
                serde_json::json!({ "service": service.as_str(), "version": version })
            })
            .collect();
        let report = serde_json::json!({
            "storage": storage.describe(),
            "services": services,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(out, "Migrated {}:", storage.describe())?;
        for (service, version) in &migrated {
            writeln!(out, "  {service:<12} at migration {version}")?;
        }
    }
    Ok(())
}

/// The credential the client commands send: the token in `token_file`, else ROLLCALL_TOKEN,
/// else none.
fn credentials(token_file: Option<&Path>) -> anyhow::Result<Credentials> {
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the token file {}: check --token-file or ROLLCALL_TOKEN_FILE",
                path.display()
            )
        })?,
        None => match std::env::var("ROLLCALL_TOKEN") {
            Ok(token) => token,
            Err(_) => return Ok(Credentials::none()),
        },
    };
    let source = match token_file {
        Some(path) => format!("in {}", path.display()),
        None => "in ROLLCALL_TOKEN".to_owned(),
    };
    Credentials::bearer(&token)
        .map_err(|error| anyhow::anyhow!("the token {source} cannot be sent: {error}"))
}

/// Imports each file, prints a line per file, then waits for figures and cases to catch up.
/// A dry run checks each file and prints what importing it would change, storing nothing.
pub(crate) async fn import_ctf(
    clients: &Clients,
    files: &[PathBuf],
    by: &str,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut feed_cursor = 0;
    let mut failures = 0;
    let mut totals = CtfTotals::default();
    let progress = file_progress(files.len());
    for path in files {
        let name = path.display().to_string();
        progress.set_message(name.clone());
        progress.inc(1);
        let content = match std::fs::read(path) {
            Ok(content) => content,
            Err(error) => {
                progress.suspend(|| eprintln!("error: cannot read {name}: {error}"));
                failures += 1;
                continue;
            }
        };
        let request = ImportCtfRequest {
            file_name: name.clone(),
            content,
            imported_by: by.to_owned(),
            dry_run,
        };
        let response = match import_ctf_with_retries(clients, request, &progress).await {
            Ok(response) => response,
            Err(message) => {
                progress.suspend(|| eprintln!("error: {message}"));
                failures += 1;
                continue;
            }
        };
        totals.add(&response);
        if dry_run {
            write_ctf_dry_run(&name, &response, out)?;
            continue;
        }
        feed_cursor = feed_cursor.max(response.feed_cursor);
        if response.already_imported {
            writeln!(
                out,
                "{name}: already imported, nothing changed (school {})",
                response.laestab
            )?;
        } else {
            writeln!(
                out,
                "{name}: school {}, {} ({} new, {} updated), {} recorded, {} unchanged",
                response.laestab,
                count(response.pupils, "pupil", "pupils"),
                response.pupils_added,
                response.pupils_updated,
                count(response.marks_recorded, "mark", "marks"),
                response.marks_unchanged
            )?;
        }
        for warning in &response.warnings {
            writeln!(out, "  warning: {} ({})", warning.message, warning.element)?;
        }
    }
    progress.finish_and_clear();
    if files.len() > 1 {
        totals.write(files.len(), failures, dry_run, out)?;
    }
    if feed_cursor > 0 {
        clients.wait_for_sync(feed_cursor, SYNC_TIMEOUT).await?;
    }
    if failures > 0 {
        bail!("{failures} of {} files were not imported", files.len());
    }
    Ok(())
}

/// Sends one file to ImportCtf, and sends it again after a failure that may pass, such as a
/// restart of the server or its database. The registers keep the file's SHA-256 as the
/// import's request id, so a file stored before the response was lost is not stored twice.
/// Returns the message to print when the import failed.
async fn import_ctf_with_retries(
    clients: &Clients,
    request: ImportCtfRequest,
    progress: &indicatif::ProgressBar,
) -> Result<rollcall_api::mis_adapter::v1::ImportCtfResponse, String> {
    let mut delays = crate::retry::delays();
    let mut attempt = 1;
    loop {
        let status = match clients
            .mis_adapter
            .clone()
            .import_ctf(request.clone())
            .await
        {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => status,
        };
        if !crate::retry::is_transient(status.code()) {
            return Err(format!(
                "{}; nothing from this file was stored",
                status.message()
            ));
        }
        let Some(delay) = delays.next() else {
            return Err(format!(
                "{}: {} (gave up after {attempt} attempts). Check that the rollcall server at {} \
                 is running and reaches its database, then import the file again; a file \
                 stored before is recognised and not stored twice.",
                request.file_name,
                status.message(),
                clients.mis_adapter_url
            ));
        };
        attempt += 1;
        progress.suspend(|| {
            eprintln!(
                "warning: {}: {}; retrying in {:.1}s (attempt {attempt} of {})",
                request.file_name,
                status.message(),
                delay.as_secs_f64(),
                crate::retry::MAX_ATTEMPTS
            );
        });
        tokio::time::sleep(delay).await;
    }
}

/// Totals of a run of `import ctf` over several files, for its closing summary.
#[derive(Debug, Default)]
struct CtfTotals {
    files: usize,
    already_imported: usize,
    pupils_added: i32,
    pupils_updated: i32,
    marks_recorded: i32,
    marks_unchanged: i32,
    warnings: usize,
}

impl CtfTotals {
    fn add(&mut self, response: &rollcall_api::mis_adapter::v1::ImportCtfResponse) {
        self.files += 1;
        if response.already_imported {
            self.already_imported += 1;
        }
        self.pupils_added += response.pupils_added;
        self.pupils_updated += response.pupils_updated;
        self.marks_recorded += response.marks_recorded;
        self.marks_unchanged += response.marks_unchanged;
        self.warnings += response.warnings.len();
    }

    fn write(
        &self,
        files_given: usize,
        failures: usize,
        dry_run: bool,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        let (heading, files_done, would) = if dry_run {
            ("summary (dry run, nothing stored)", "checked", "would be ")
        } else {
            ("summary", "imported", "")
        };
        writeln!(
            out,
            "{heading}: {} of {files_given} files {files_done} ({} imported before), {failures} \
             failed; {} pupils {would}added, {} {would}updated; {} marks {would}recorded, {} \
             unchanged; {} warnings",
            self.files,
            self.already_imported,
            self.pupils_added,
            self.pupils_updated,
            self.marks_recorded,
            self.marks_unchanged,
            self.warnings
        )?;
        Ok(())
    }
}

/// Returns a progress bar over the files of an import, drawn on standard error only when it
/// is a terminal, so that scripts and tests get clean output.
fn file_progress(files: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if files < 2 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(u64::try_from(files).unwrap_or(u64::MAX)),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:40!} [{bar:30}] {pos}/{len} files {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Prints what importing a CTF would change. A dry-run response must be marked as one, so that
/// a server that ignores the flag is caught rather than reported as having stored nothing.
fn write_ctf_dry_run(
    name: &str,
    response: &rollcall_api::mis_adapter::v1::ImportCtfResponse,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if !response.dry_run {
        bail!(
            "{name}: the server does not support dry runs, so it may have imported the file; \
             check with `rollcall report attendance --school {}`",
            response.laestab
        );
    }
    if response.already_imported {
        writeln!(
            out,
            "{name}: dry run, nothing stored: already imported, importing again would change \
             nothing (school {})",
            response.laestab
        )?;
    } else {
        writeln!(
            out,
            "{name}: dry run, nothing stored: school {}, {}: {} would be added and {} updated; \
             {} would be recorded, {} unchanged",
            response.laestab,
            count(response.pupils, "pupil", "pupils"),
            response.pupils_added,
            response.pupils_updated,
            count(response.marks_recorded, "mark", "marks"),
            response.marks_unchanged
        )?;
    }
    for warning in &response.warnings {
        writeln!(out, "  warning: {} ({})", warning.message, warning.element)?;
    }
    Ok(())
}

fn check_laestab(value: &str) -> anyhow::Result<String> {
    rollcall_domain::school::parse_laestab(value)
        .map_err(|error| anyhow::anyhow!("invalid --school: {error}"))
}

/// Prints the attendance report for a school.
pub(crate) async fn report_attendance(
    clients: &Clients,
    school: &str,
    as_of: Option<&str>,
    json_output: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let laestab = check_laestab(school)?;
    let response = clients
        .policy
        .clone()
        .get_school_attendance(GetSchoolAttendanceRequest {
            laestab: laestab.clone(),
            as_of: as_of.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();

    if json_output {
        let rows: Vec<serde_json::Value> = response
            .pupils
            .iter()
            .map(|pupil| {
                let mut row = figures_json(&pupil.figures.unwrap_or_default());
                row.insert("upn".into(), json!(pupil.upn));
                row.insert("year_group".into(), json!(pupil.year_group));
                serde_json::Value::Object(row)
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }

    let period = response.period.clone().unwrap_or_default();
    if response.pupils.is_empty() {
        writeln!(out, "School {laestab} has no marks yet.")?;
        return Ok(());
    }
    writeln!(
        out,
        "Attendance for school {laestab}, {} to {} (policy {})",
        period.from_date, period.to_date, response.policy_id
    )?;
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header([
        "UPN",
        "Year",
        "Possible",
        "Attended",
        "Authorised",
        "Unauthorised",
        "Attendance %",
        "Persistent",
        "Severe",
    ]);
    for pupil in &response.pupils {
        let figures = pupil.figures.unwrap_or_default();
        table.add_row([
            pupil.upn.clone(),
            pupil.year_group.clone(),
            figures.possible_sessions.to_string(),
            figures.attended_sessions.to_string(),
            figures.authorised_absence_sessions.to_string(),
            figures.unauthorised_absence_sessions.to_string(),
            figures
                .attendance_percent
                .map_or("-".to_owned(), |p| format!("{p:.1}")),
            yes_no(figures.persistent_absence).to_owned(),
            yes_no(figures.severe_absence).to_owned(),
        ]);
    }
    for index in 2..9 {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    writeln!(out, "{}", crate::text::table(&table))?;
    let persistent = response
        .pupils
        .iter()
        .filter(|p| p.figures.as_ref().is_some_and(|f| f.persistent_absence))
        .count();
    writeln!(
        out,
        "{}, {persistent} persistently absent",
        count(response.pupils.len(), "pupil", "pupils")
    )?;
    Ok(())
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// Prints the open cases of a school, and those up for review.
pub(crate) async fn list_cases(
    clients: &Clients,
    school: &str,
    json_output: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let laestab = check_laestab(school)?;
    // The cases service holds only schools that have cases. The registers confirm the school
    // exists, so a mistyped number is not taken for a school without cases.
    clients
        .registers
        .clone()
        .get_school(GetSchoolRequest {
            laestab: laestab.clone(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    let cases = fetch_cases(clients, &laestab).await?;
    if json_output {
        let rows: Vec<serde_json::Value> = cases.iter().map(case_json).collect();
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    if cases.is_empty() {
        writeln!(out, "School {laestab} has no open cases.")?;
        return Ok(());
    }

    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header([
        "Case",
        "UPN",
        "Concern",
        "Stage",
        "Owner",
        "Status",
        "Opened on",
        "Next review",
    ]);
    for case in &cases {
        table.add_row([
            case.id.clone(),
            case.upn.clone(),
            case.concern.clone(),
            format!("{} {}", case.stage_number, case.stage),
            case.owner_role.clone(),
            case_status_name(case).to_owned(),
            case.opened_on.clone(),
            case.next_review.clone(),
        ]);
    }
    writeln!(out, "{}", crate::text::table(&table))?;
    writeln!(out, "{}", count(cases.len(), "case", "cases"))?;
    Ok(())
}

/// Reads every open case of a school, and those up for review, page by page. An empty
/// `laestab` reads the cases of every school.
pub(crate) async fn fetch_cases(clients: &Clients, laestab: &str) -> anyhow::Result<Vec<Case>> {
    let mut cases = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .cases
            .clone()
            .list_cases(ListCasesRequest {
                laestab: laestab.to_owned(),
                status: CaseStatus::Unspecified as i32,
                page_size: 1_000,
                page_token,
            })
            .await
            .map_err(|status| anyhow::anyhow!("{}", status.message()))?
            .into_inner();
        cases.extend(page.cases);
        if page.next_page_token.is_empty() {
            return Ok(cases);
        }
        page_token = page.next_page_token;
    }
}

fn case_json(case: &Case) -> serde_json::Value {
    json!({
        "id": case.id,
        "upn": case.upn,
        "laestab": case.laestab,
        "concern": case.concern,
        "stage": case.stage,
        "stage_number": case.stage_number,
        "owner_role": case.owner_role,
        "status": case_status_name(case),
        "opened_at": case_opened_at(case),
        "opened_on": case.opened_on,
        "next_review": case.next_review,
        "ladder": case.ladder,
        "ladder_version": case.ladder_version,
    })
}

fn case_opened_at(case: &Case) -> String {
    case.opened_at
        .as_ref()
        .and_then(from_timestamp)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn case_status_name(case: &Case) -> &'static str {
    match CaseStatus::try_from(case.status) {
        Ok(CaseStatus::Open) => "open",
        Ok(CaseStatus::Review) => "review",
        Ok(CaseStatus::Closed) => "closed",
        _ => "unknown",
    }
}

/// Writes a file through a temporary file in the same folder, so that a failure leaves no
/// partial file behind.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("--out {} does not name a file", path.display()))?;
    if !folder.is_dir() {
        bail!(
            "cannot write {}: folder {} does not exist; create it or choose another path",
            path.display(),
            folder.display()
        );
    }
    let temporary = folder.join(format!(".{}.partial", file_name.to_string_lossy()));
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| {
        let _ = std::fs::remove_file(&temporary);
        format!("cannot write {}", path.display())
    })
}
