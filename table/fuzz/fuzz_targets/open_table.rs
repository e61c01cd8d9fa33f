//! Fuzzes the table view: any bytes given to `Router::open` must give a router or an error,
//! never a panic; a router that opens must survive lookups of every port with assorted hosts
//! and paths.

#![no_main]

use libfuzzer_sys::fuzz_target;
use table::{Headers, Request, Router};

struct H;
impl Headers for H {
    fn first(&self, name: &str) -> Option<&[u8]> {
        (name == "x-version").then_some(b"two")
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(router) = Router::open(data, None) else { return };
    let mut scratch = router.scratch();
    for port in router.table().ports.iter() {
        for host in [&b"a.example.com"[..], b"x.example.com", b"", b"other"] {
            for path in [&b"/"[..], b"/v2/x", b"/img/1.png"] {
                let req = Request { method: b"GET", path, query: b"animal=whale&a", host };
                let _ = router.route(port, &req, &H, &mut scratch);
            }
        }
    }
});
