//! The response side of an exchange: waiting for and parsing the upstream's head (within the
//! rule's timeouts, interim heads dropped, retried statuses handed back to the budget), turning
//! it into the client's, relaying the body with regenerated framing, and the tunnel after a 101.

use std::time::Duration;

use table::format::ArchivedRetry;
use tracing::debug;

use super::{Exchange, Flow, Progress, Relayed, Rule, Summary, UpstreamRef};
use crate::error::{Cause, Phase, ProxyError, Side, timed};
use crate::fields::Edits;
use crate::filters::cors;
use crate::http1::body::{BodyDecoder, Encode};
use crate::http1::local;
use crate::http1::response::{self, ResponseFraming, ResponseHead};

/// A response head already turned into the client's head (in `out`).
pub(super) struct Response {
    pub(super) head: ResponseHead,
    pub(super) encode: Encode,
    pub(super) close_client: bool,
}

/// What one look at an upstream's bytes found ([`Exchange::parse_head`]).
pub(super) enum HeadStep {
    /// The final head, turned into the client's and consumed.
    Final(Response),
    /// An interim (1xx) head, dropped and consumed.
    Interim,
    /// No whole head yet.
    More,
}

/// How long to wait for more of a response head: lb's `upstream` timeout, cut to what is left
/// of the rule's `request` timeout (counted from the request's arrival, across retries) and its
/// `backendRequest` timeout (from this attempt), each given as (limit, elapsed). `None`: one of
/// them has run out (→ 504, or a retry when the budget allows).
fn head_wait(
    upstream: Duration,
    request: Option<(Duration, Duration)>,
    attempt: Option<(Duration, Duration)>,
) -> Option<Duration> {
    let mut limit = upstream;
    for (route, elapsed) in [request, attempt].into_iter().flatten() {
        let left = route.checked_sub(elapsed).filter(|l| !l.is_zero())?;
        limit = limit.min(left);
    }
    Some(limit)
}

impl Exchange<'_> {
    /// The synchronous step of [`Exchange::response_head`]: parses what came in. Kept out of the async function so that the field slots
    /// (4 KiB) live on the stack for this call only, not in every exchange's future.
    pub(super) fn parse_head(
        &mut self,
        up: &mut UpstreamRef<'_>,
        req: Summary,
        retry: Option<&ArchivedRetry>,
        edits: &Edits<'_>,
    ) -> Result<HeadStep, ProxyError> {
        let head_error = |cause| ProxyError::new(Side::Upstream, Phase::ResponseHead, cause);
        let buf = up.input.bytes();
        let mut fields = response::response_fields();
        match response::parse_response(buf, &mut fields, req.head_method) {
            Ok(Some((h, _))) if (100..200).contains(&h.status) && h.status != 101 => {
                // 100 Continue and friends: we answered Expect ourselves; drop them.
                up.input.consume(h.len, &self.core.spare);
                Ok(HeadStep::Interim)
            }
            Ok(Some((head, _)))
                if retry.is_some_and(|r| r.codes.iter().any(|c| c.to_native() == head.status)) =>
            {
                Err(head_error(Cause::Status(head.status)))
            }
            Ok(Some((head, fields))) => {
                // Read now: lb may have started draining while the upstream worked.
                let keep_alive = req.keep_alive && !self.core.draining.get();
                self.out.clear();
                let (encode, close_client) = response::response_head(
                    self.out, buf, &head, fields, req.http10, keep_alive, edits,
                );
                up.input.consume(head.len, &self.core.spare);
                Ok(HeadStep::Final(Response { head, encode, close_client }))
            }
            Ok(None) if buf.len() > self.core.settings.limits.max_head => {
                Err(head_error(Cause::Framing("response head too large")))
            }
            Ok(None) => Ok(HeadStep::More),
            Err(response::BadResponse(what)) => Err(head_error(Cause::Framing(what))),
        }
    }

    /// Reads until a complete response head (skipping interim 1xx other than 101) is in; then
    /// replaces the request bytes in `out` with the client's response head and consumes the
    /// upstream head. Parsed once: the fields only live in this synchronous step. A status in
    /// `retry`'s codes is returned as an error instead (the budget decides on a resend).
    pub(super) async fn response_head(
        &mut self,
        rule: Rule<'_>,
        up: &mut UpstreamRef<'_>,
        req: Summary,
        retry: Option<&ArchivedRetry>,
    ) -> Result<Response, ProxyError> {
        let edits = Edits {
            lists: [Some(&rule.action.response_headers), None],
            added: Some(rule.cors),
            replaces: &cors::OWNED,
            client_cert: &[],
        };
        let attempt_started = self.core.wheel.now();
        let head_error = |cause| ProxyError::new(Side::Upstream, Phase::ResponseHead, cause);
        let mut started = false;
        loop {
            if !up.input.bytes().is_empty() {
                started = true;
                match self.parse_head(up, req, retry, &edits)? {
                    HeadStep::Final(response) => return Ok(response),
                    // An interim head was dropped: look at what follows it.
                    HeadStep::Interim => continue,
                    HeadStep::More => {}
                }
            }
            let wheel = &self.core.wheel;
            let Some(limit) = head_wait(
                self.core.settings.timeouts.upstream,
                rule.request_timeout(req).map(|t| (t, wheel.elapsed_since(req.arrived))),
                rule.attempt_timeout().map(|t| (t, wheel.elapsed_since(attempt_started))),
            ) else {
                return Err(head_error(Cause::Timeout));
            };
            let read = up.conn.read(up.input, &self.core.spare);
            let side = (Side::Upstream, Phase::ResponseHead);
            let e = match timed(&self.core.wheel, self.deadline, limit, side, read).await {
                Ok(0) => head_error(Cause::Closed),
                Ok(_) => continue,
                Err(e) if e.cause == Cause::Timeout => return Err(e),
                Err(e) => e,
            };
            // Nothing came back at all: the upstream never acted on the request.
            return Err(if started { e } else { e.retry_safe() });
        }
    }

    /// Sends the response head and relays the body; says what becomes of both connections.
    pub(super) async fn relay_response(
        &mut self,
        up: &mut UpstreamRef<'_>,
        response: Response,
        req: Summary,
        progress: &Progress,
    ) -> Relayed {
        let Response { head, encode, close_client } = response;
        if head.status == 101 {
            return Relayed {
                flow: Box::pin(self.switch_protocols(up, req)).await,
                reusable: false,
            };
        }
        let mut body = match head.framing {
            ResponseFraming::None => BodyDecoder::none(),
            ResponseFraming::Length(n) => BodyDecoder::length(n, encode),
            ResponseFraming::Chunked => {
                BodyDecoder::chunked(encode, u64::MAX, self.core.settings.limits.max_chunk_ext)
            }
            ResponseFraming::UntilClose => BodyDecoder::until_close(encode),
        };
        // Nothing reaches the client before the first body bytes decode: an upstream whose
        // very first chunk is malformed still gets the client a 502, not an empty reply.
        let mut head_sent = false;
        let relayed: Result<(), ProxyError> = async {
            let limit = self.core.settings.timeouts.upstream;
            let side = (Side::Upstream, Phase::ResponseBody);
            loop {
                let used = body
                    .decode(up.input.bytes(), self.out)
                    .map_err(|e| ProxyError::body(Side::Upstream, Phase::ResponseBody, e))?;
                up.input.consume(used, &self.core.spare);
                head_sent = true;
                progress.answered.set(true);
                if body.is_done() {
                    return self.write_client().await;
                }
                self.write_client().await?;
                let read = up.conn.read(up.input, &self.core.spare);
                if timed(&self.core.wheel, self.deadline, limit, side, read).await? == 0 {
                    if body.eof(self.out) {
                        return self.write_client().await;
                    }
                    return Err(ProxyError::new(
                        Side::Upstream,
                        Phase::ResponseBody,
                        Cause::Closed,
                    ));
                }
            }
        }
        .await;
        let request_done = progress.request_done.get();
        if let Err(e) = relayed {
            self.count_upstream_failure(&e);
            self.rec.flag(super::response_flag(&e));
            if !head_sent {
                let flow = self.fail(e, request_done, req).await;
                return Relayed { flow, reusable: false };
            }
            // The response has started: all we can do is cut the client off.
            debug!(addr = %up.key.addr, "response relay failed: {e}");
            return Relayed { flow: Flow::Close, reusable: false };
        }
        // Reuse only after a cleanly framed exchange with nothing left over.
        let reusable =
            !head.close && !body.until_eof() && up.input.bytes().is_empty() && request_done;
        // After an upgrade the upstream refused (no 101), bytes the client sent after the
        // request may be the new protocol: never parse them as requests.
        let flow =
            if close_client || req.upgrade || !request_done { Flow::Close } else { Flow::Continue };
        Relayed { flow, reusable }
    }

    /// After a 101: send the head, then copy bytes both ways until both sides are done.
    async fn switch_protocols(&mut self, up: &mut UpstreamRef<'_>, req: Summary) -> Flow {
        if !req.upgrade {
            // A 101 nobody asked for cannot be passed on.
            up.input.release(&self.core.spare);
            let unasked = Cause::Framing("101 without an upgrade request");
            let e = ProxyError::new(Side::Upstream, Phase::ResponseHead, unasked);
            self.out.clear();
            local::local_response(self.out, e.status(), true, false);
            let _ = self.write_client().await;
            return Flow::Close;
        }
        // Bytes already read on either side belong to the new protocol.
        self.out.extend_from_slice(up.input.bytes());
        up.input.release(&self.core.spare);
        if self.write_client().await.is_err() {
            return Flow::Close;
        }
        self.out.extend_from_slice(self.input.bytes());
        self.input.release(&self.core.spare);
        if up.conn.write(self.out).await.is_err() {
            return Flow::Close;
        }
        crate::tunnel::copy_both(self.core, self.client, up.conn).await;
        Flow::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_for_a_response_head_is_the_tightest_timeout_left() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(head_wait(s(60), None, None), Some(s(60)));
        // `request` counts from arrival: 10 s rule, 4 s gone (body upload, earlier attempts).
        assert_eq!(head_wait(s(60), Some((s(10), s(4))), None), Some(s(6)));
        // `backendRequest` counts from this attempt, and the tighter one wins.
        assert_eq!(head_wait(s(60), Some((s(10), s(4))), Some((s(2), ms(500)))), Some(ms(1500)));
        // lb's own upstream timeout still bounds a generous rule.
        assert_eq!(head_wait(s(5), Some((s(30), s(1))), None), Some(s(5)));
        // Run out (or exactly used up): time out now.
        assert_eq!(head_wait(s(60), Some((s(10), s(10))), None), None);
        assert_eq!(head_wait(s(60), None, Some((s(1), s(2)))), None);
    }
}
