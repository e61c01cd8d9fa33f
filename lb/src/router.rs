//! Routing glue: the parsed request fields as seen by the table's lookup (header matches read
//! the fields in place, no map is built).

use table::Headers;

/// The request's fields, for header matches.
#[derive(Debug)]
pub struct FieldHeaders<'a, 'b>(pub &'a [httparse::Header<'b>]);

impl Headers for FieldHeaders<'_, '_> {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| crate::http1::parse::trim_ows(h.value))
    }
}
