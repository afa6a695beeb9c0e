//! Federation: tokens other issuers signed (GitHub Actions, GitLab CI, a Kubernetes API
//! server, any OIDC issuer) traded for tailpass run tokens.
//!
//! A CI job that has no tailnet identity, or only a shared tag, still holds a token its
//! platform signed saying which repository, workflow, ref and run it is. The policy file's
//! `[[federation]]` tables name the issuers trusted and what their tokens must say
//! ([`table`]); a token that verifies against its issuer's published keys ([`keys`]) and
//! matches a table in every pattern makes its presenter selectable as `fed:<table>` in policy
//! rules, and the run token minted for it carries a `fed` object of the claims its profile
//! names ([`profile`]). [`external`] is the check itself: signature, algorithm, issuer,
//! audience, lifetime, then the table's patterns. [`runs`] is what each trade records, so that
//! the runs minted from matching tokens can be listed and revoked.

pub mod external;
pub mod keys;
pub mod profile;
pub mod runs;
pub mod table;

pub use external::{ExternalError, Federated};
pub use profile::Profile;
pub use table::{FederationTable, TableError};
