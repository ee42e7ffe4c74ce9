//! Reads any bytes as a Common Transfer File. A file the reader accepts is written back, and
//! the written file must read as the same data.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = rollcall_ctf::read(data) else {
        return;
    };
    let Ok(written) = rollcall_ctf::write(&file) else {
        return;
    };
    let again = rollcall_ctf::read(&written).expect("a written file reads again");
    assert_eq!(again, file, "the written file reads as the same data");
});
