//! The one retry loop of every request the client sends.
//!
//! Connection errors and 500/502/503/504 answers (transient server trouble; every request the
//! client retries is idempotent) are retried a bounded number of times with exponential
//! backoff (doubling, at most 30 s); every other answer is final — among them 507 (the
//! server's storage is full: sending the same bytes again cannot succeed). Each retry is
//! announced on stderr: `URL: WHY; retrying in N ms (attempt K/M)`.

use std::time::Duration;

use reqwest::StatusCode;

use super::answer::describe_transport;
use crate::error::{Error, Result};

/// The longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// How often and how patiently a request is sent again.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetryPolicy {
    /// Extra attempts after the first.
    pub retries: u32,
    /// The first delay, doubled at each attempt.
    pub backoff: Duration,
}

/// One request to retry: where it goes, and what to add to the error when it gives up.
pub(super) struct Request<'a> {
    pub url: &'a str,
    /// Appended to the transport error after the last attempt (empty for none).
    pub give_up_hint: &'static str,
}

/// The verdict on one attempt.
enum Verdict<T> {
    Final(Result<T>),
    Retry(String),
}

impl RetryPolicy {
    /// Runs `attempt` until it gives a final answer: an answer whose status `status_of` says
    /// is not transient, a transport error that no retry can fix, or the last attempt's
    /// outcome. `before_retry` runs before each new attempt (e.g. to reset a progress bar).
    pub(super) fn run<T>(
        &self,
        req: &Request<'_>,
        mut attempt: impl FnMut() -> Result<reqwest::Result<T>>,
        status_of: impl Fn(&T) -> StatusCode,
        mut before_retry: impl FnMut(),
    ) -> Result<T> {
        let mut delay = self.backoff;
        let mut n = 0;
        loop {
            n += 1;
            let why = match self.judge(req, n, attempt()?, &status_of) {
                Verdict::Final(result) => return result,
                Verdict::Retry(why) => why,
            };
            eprintln!(
                "{}: {why}; retrying in {} ms (attempt {}/{})",
                req.url,
                delay.as_millis(),
                n + 1,
                self.retries + 1
            );
            std::thread::sleep(delay);
            delay = (delay * 2).min(MAX_DELAY);
            before_retry();
        }
    }

    /// Whether the outcome of attempt `n` is final, or why it is worth another attempt.
    fn judge<T>(
        &self,
        req: &Request<'_>,
        n: u32,
        outcome: reqwest::Result<T>,
        status_of: &impl Fn(&T) -> StatusCode,
    ) -> Verdict<T> {
        let last = n > self.retries;
        match outcome {
            Ok(answer) => {
                let status = status_of(&answer);
                if last || !is_transient(status) {
                    Verdict::Final(Ok(answer))
                } else {
                    Verdict::Retry(format!("server answered {status}"))
                }
            }
            Err(e) if last || e.is_status() || e.is_builder() => {
                let mut message = describe_transport(&e);
                if n > 1 {
                    message.push_str(&format!(" (gave up after {n} attempts)"));
                }
                message.push_str(req.give_up_hint);
                Verdict::Final(Err(Error::Transport {
                    url: req.url.to_owned(),
                    message,
                }))
            }
            Err(e) => Verdict::Retry(describe_transport(&e)),
        }
    }
}

/// Answers that say the server had transient trouble.
fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502..=504)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_answers() {
        for (code, transient) in [
            (500, true),
            (501, false),
            (502, true),
            (504, true),
            (404, false),
            // A full disk on the server: sending the same bytes again cannot help.
            (507, false),
        ] {
            let status = StatusCode::from_u16(code).expect("status");
            assert_eq!(is_transient(status), transient, "{code}");
        }
    }

    #[test]
    fn insufficient_storage_is_not_retried() {
        let policy = RetryPolicy {
            retries: 3,
            backoff: Duration::from_millis(1),
        };
        let req = Request {
            url: "http://127.0.0.1:1/x",
            give_up_hint: "",
        };
        let mut sent = 0;
        let status = policy
            .run(
                &req,
                || {
                    sent += 1;
                    Ok(Ok(StatusCode::INSUFFICIENT_STORAGE))
                },
                |s| *s,
                || {},
            )
            .expect("a 507 is a final answer");
        assert_eq!((status, sent), (StatusCode::INSUFFICIENT_STORAGE, 1));
    }

    #[test]
    fn a_transient_answer_is_retried_until_the_last_attempt() {
        let policy = RetryPolicy {
            retries: 2,
            backoff: Duration::from_millis(1),
        };
        let req = Request {
            url: "http://127.0.0.1:1/x",
            give_up_hint: "",
        };
        let mut sent = 0;
        let mut restarts = 0;
        let status = policy
            .run(
                &req,
                || {
                    sent += 1;
                    Ok(Ok(StatusCode::SERVICE_UNAVAILABLE))
                },
                |s| *s,
                || restarts += 1,
            )
            .expect("the last answer is final");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!((sent, restarts), (3, 2));
    }
}
