//! Upstream response heads: any bytes give a head, "incomplete" or a 502-worthy error, never a
//! panic; an accepted head is rewritten into a client head that httparse accepts as exactly
//! one response head with the same status.

#![no_main]

use lb::http1::response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let head_request = flags & 1 == 1;
    let mut fields = response::response_fields();
    let Ok(Some((head, parsed))) = response::parse_response(data, &mut fields, head_request) else {
        return;
    };
    let mut out = Vec::new();
    let edits = lb::Edits::default();
    response::response_head(&mut out, data, &head, parsed, flags & 2 == 2, flags & 4 == 4, &edits);
    let mut theirs = [httparse::EMPTY_HEADER; 256];
    let mut res = httparse::Response::new(&mut theirs);
    match res.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, out.len(), "the client head is more than one head");
            assert_eq!(res.code, Some(head.status));
        }
        other => panic!(
            "lb wrote a client head httparse refuses ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
});
