//! Reads any bytes as a register export, as `rollcall import csv` does: the header row is
//! planned against a column profile, then every row is read into pupils and marks.
//!
//! The first byte chooses the profile. 0 to 3 choose the built-in profiles rollcall, sims,
//! arbor and bromcom, which cover pupils files and long and wide marks files. Any other value
//! reads a profile file (TOML) up to the first NUL byte, and the file after it.
#![no_main]

use std::sync::LazyLock;

use csv::StringRecord;
use libfuzzer_sys::fuzz_target;
use rollcall_csv::lines::record_line;
use rollcall_csv::plan::{csv_reader, plan_bytes};
use rollcall_csv::profile::{BUILT_IN, Profile};
use rollcall_csv::rows::RowReader;

static BUILT_IN_PROFILES: LazyLock<Vec<Profile>> = LazyLock::new(|| {
    BUILT_IN
        .iter()
        .map(|(name, _)| Profile::load(name).expect("a built-in profile loads"))
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let own_profile;
    let (profile, file) = match BUILT_IN_PROFILES.get(usize::from(choice)) {
        Some(profile) => (profile, rest),
        None => {
            let end = rest.iter().position(|byte| *byte == 0).unwrap_or(rest.len());
            let Ok(text) = std::str::from_utf8(&rest[..end]) else {
                return;
            };
            let Ok(profile) = Profile::parse("fuzz.toml", text) else {
                return;
            };
            own_profile = profile;
            (&own_profile, rest.get(end + 1..).unwrap_or_default())
        }
    };

    let Ok(plan) = plan_bytes("fuzz.csv", file, profile) else {
        return;
    };
    // The same loop as the import's reading thread, without the batches.
    let mut reader = csv_reader(file);
    let mut rows = RowReader::new(&plan, profile);
    let mut record = StringRecord::new();
    while let Ok(true) = reader.read_record(&mut record) {
        let line = record_line(&mut reader, &record);
        for row in rows.read(&record, line) {
            if let Ok((_, origin)) = row {
                assert!(origin.line >= 2, "a row after the header");
            }
        }
    }
});
