//! HTTPRoute filters, applied by the exchange to the protocol-neutral request: `cors`
//! (preflights answered, response fields added), `redirect` (`RequestRedirect`'s `Location`),
//! `rewrite` (`URLRewrite`'s path) and `mirror` (`RequestMirror`'s copies). Header modifiers
//! need no code of their own: the table's edit lists reach the head writers as
//! [`crate::fields::Edits`]. No filter sees wire bytes.

pub(crate) mod cors;
pub(crate) mod redirect;
pub(crate) mod rewrite;
pub(crate) mod mirror;
