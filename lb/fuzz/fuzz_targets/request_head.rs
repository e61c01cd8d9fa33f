//! Request heads: any bytes give a head, "incomplete" or a refusal, never a panic; an accepted
//! head regenerates into an upstream head lb itself accepts, with the same framing.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lb_fuzz::request_roundtrip(data, &[]);
});
