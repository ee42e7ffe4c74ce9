//! Reads the CSV files a school exports from its MIS: pupils and session marks under a column
//! profile, and parents' and carers' contacts. Every function here works on bytes or files and
//! sends nothing; `rollcall import csv` and `rollcall contacts import` send what it returns.

pub mod contacts;
pub mod lines;
pub mod plan;
pub mod profile;
pub mod rows;
pub mod values;
