//! Messages to parents and carers: first-day contact after an unexplained absence, and letters
//! filed on a case.
//!
//! A message is one recipient on one channel. It is stored before anything is sent, under a
//! key that makes a second copy impossible, and an outbox task delivers it: one sender claims
//! it at a time, every attempt is logged, and failures are retried with backoff. A message
//! whose sender stopped mid-attempt is marked unconfirmed and waits for a person instead of
//! being sent again, unless its channel drops repeats by itself.

pub(crate) mod channels;
pub(crate) mod config;
pub(crate) mod first_day;
pub(crate) mod letters;
pub(crate) mod outbox;
pub(crate) mod rpc;
pub(crate) mod store;
pub(crate) mod templates;

pub use config::{
    DeliveryConfig, EmailConfig, FirstDayConfig, LettersConfig, MessagingConfig, SmsConfig,
    SmtpSecurity,
};
