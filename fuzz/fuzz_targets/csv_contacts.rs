//! Reads any bytes as a contacts file, as `rollcall contacts import` does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rollcall_csv::contacts::read_contacts("contacts.csv", data);
});
