//! Reads any text as a policy file and checks a policy it accepts against the statutory
//! framework, as `rollcall policy check` does.
#![no_main]

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use rollcall_domain::policy::check::{compare, statutory_in_force};
use rollcall_domain::policy::file::parse_policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(document) = parse_policy(text) else {
        return;
    };
    let policy = document.policy;
    // The day the statutory framework came into force, a later day, and the policy's own
    // first day when the framework is in force then.
    let mut days = vec![
        NaiveDate::from_ymd_opt(2024, 8, 19),
        NaiveDate::from_ymd_opt(2026, 1, 5),
    ];
    days.push(Some(policy.effective_from));
    for on in days.into_iter().flatten() {
        if let Some(statutory) = statutory_in_force(on) {
            let _ = compare(&policy, &statutory, on);
        }
    }
});
