//! HTTP/1.x: strict request parsing (`parse`), body framing (`body`) and head writing
//! (`message`). Pure functions over byte slices: no I/O here, so all of it is unit-tested and
//! fuzzable without sockets.

pub mod body;
pub mod message;
pub mod parse;
