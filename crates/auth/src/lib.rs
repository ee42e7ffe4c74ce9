//! Who may call rollcall, and what they may do.
//!
//! Every call except health checks and reflection carries a bearer token. [`AuthLayer`] checks
//! it against the identity provider's keys ([`TokenVerifier`]), finds the call's row in the
//! role-by-call table ([`rules::RULES`]) and refuses callers whose roles the row does not list.
//! The services of one deployment call each other with an [`InternalKey`]. With `--dev`, the
//! server trusts every caller ([`Mode::Development`]) and listens only on loopback.

pub mod audit;
mod caller;
mod certificate;
mod keys;
mod layer;
mod principal;
mod role;
pub mod rules;
mod settings;
mod verify;

pub use caller::{Caller, Touched, caller};
pub use layer::{AuthLayer, AuthService};
pub use principal::{Credential, Principal, Schools};
pub use role::{Role, UnknownRole};
pub use settings::{ClaimNames, KeySource, TokenSettings};
pub use verify::{Authenticator, InternalKey, Mode, Refusal, TokenVerifier};
