//! The request pipeline, one module per stage, in the order a request meets them:
//!
//! 1. [`request_id`]: keep the client's request id or make one.
//! 2. [`host`]: the host allow-list (400 / 421).
//! 3. [`path`]: one canonical path (400 `BAD_PATH`).
//! 4. [`route`]: host, longest path prefix, method (404 / 405).
//! 5. [`body`]: request body limits (413).
//! 6. [`client`]: the client address, through trusted proxies.
//! 7. [`auth`]: credentials (401) and the route's permissions (403).
//! 8. [`upstream`]: target choice, or [`echo`] for `builtin:echo` (502 / 504).
//! 9. [`forward`]: header hygiene, forwarding and identity headers.

pub mod auth;
pub mod body;
pub mod client;
pub mod echo;
pub mod forward;
pub mod host;
pub mod path;
pub mod request_id;
pub mod route;
pub mod upstream;
