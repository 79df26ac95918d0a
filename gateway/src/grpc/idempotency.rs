//! Request ids: a mutating request retried with the same id is carried out once, and the retry gets
//! the first attempt's answer. Concurrent retries wait for the first attempt.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::time::Instant;
use tonic::Status;

use super::status::retry_may_repeat;

type Outcome = Result<Vec<u8>, Status>;

/// Remembers recent outcomes by (method, request id), for a while and up to a bound.
#[derive(Debug)]
pub(crate) struct RequestIds {
    outcomes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Outcome>>>>>,
    order: Mutex<VecDeque<(Instant, String)>>,
    keep_for: Duration,
    keep_at_most: usize,
}

impl RequestIds {
    pub(crate) fn new(keep_for: Duration, keep_at_most: usize) -> Self {
        Self {
            outcomes: Mutex::new(HashMap::new()),
            order: Mutex::new(VecDeque::new()),
            keep_for,
            keep_at_most: keep_at_most.max(1),
        }
    }

    /// Runs `attempt` once per (method, request id); without a request id, every time.
    pub(crate) async fn once<T: Message + Default>(
        &self,
        method: &str,
        request_id: &str,
        attempt: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let request_id = request_id.trim();
        if request_id.is_empty() {
            return attempt.await;
        }
        if request_id.len() > 128 {
            return Err(Status::invalid_argument("request_id is longer than 128 characters"));
        }
        let key = format!("{method}\n{request_id}");
        let slot = self.slot(&key);
        let mut outcome = slot.lock().await;
        if let Some(done) = outcome.as_ref() {
            return decode(done.clone());
        }
        let result = attempt.await;
        let encoded: Outcome = result.as_ref().map(Message::encode_to_vec).map_err(Clone::clone);
        match &encoded {
            Err(status) if retry_may_repeat(status) => {
                // Nothing reached the PBX: let a retry try again.
                drop(outcome);
                self.forget(&key);
            }
            _ => *outcome = Some(encoded),
        }
        result
    }

    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<Outcome>>> {
        let now = Instant::now();
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut order = self.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some((since, old)) = order.front() {
            if now.duration_since(*since) < self.keep_for && outcomes.len() < self.keep_at_most {
                break;
            }
            outcomes.remove(old);
            order.pop_front();
        }
        outcomes
            .entry(key.to_owned())
            .or_insert_with(|| {
                order.push_back((now, key.to_owned()));
                Arc::new(tokio::sync::Mutex::new(None))
            })
            .clone()
    }

    fn forget(&self, key: &str) {
        self.outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(key);
    }
}

fn decode<T: Message + Default>(outcome: Outcome) -> Result<T, Status> {
    let bytes = outcome?;
    T::decode(bytes.as_slice()).map_err(|error| Status::internal(format!("stored answer unreadable: {error}")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use proto::api::MakeCallResponse;

    use super::*;

    #[tokio::test]
    async fn a_retry_with_the_same_id_gets_the_first_answer_without_running_again() {
        let ids = RequestIds::new(Duration::from_secs(60), 100);
        let runs = AtomicU32::new(0);
        let attempt = || async {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            Ok(MakeCallResponse { call_id: format!("C{run}") })
        };
        let first = ids.once("MakeCall", "r1", attempt()).await.unwrap();
        let retry = ids.once("MakeCall", "r1", attempt()).await.unwrap();
        assert_eq!(first, retry);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let other = ids.once("MakeCall", "r2", attempt()).await.unwrap();
        assert_eq!(other.call_id, "C1");
        let unnamed = ids.once("MakeCall", "", attempt()).await.unwrap();
        assert_eq!(unnamed.call_id, "C2", "no request id: carried out every time");
    }

    #[tokio::test]
    async fn definitive_errors_are_remembered_and_unavailable_ones_are_not() {
        let ids = RequestIds::new(Duration::from_secs(60), 100);
        let refused =
            ids.once::<MakeCallResponse>("Hold", "r1", async { Err(Status::failed_precondition("held")) }).await;
        let again = ids.once::<MakeCallResponse>("Hold", "r1", async { Ok(MakeCallResponse::default()) }).await;
        assert_eq!(again.unwrap_err().message(), refused.unwrap_err().message());
        let down = ids.once::<MakeCallResponse>("Hold", "r2", async { Err(Status::unavailable("down")) }).await;
        assert!(down.is_err());
        let retried = ids.once("Hold", "r2", async { Ok(MakeCallResponse { call_id: "C9".into() }) }).await;
        assert_eq!(retried.unwrap().call_id, "C9");
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_forgotten_after_a_while() {
        let ids = RequestIds::new(Duration::from_secs(60), 100);
        ids.once("MakeCall", "r1", async { Ok(MakeCallResponse { call_id: "C1".into() }) }).await.unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        let later = ids.once("MakeCall", "r1", async { Ok(MakeCallResponse { call_id: "C2".into() }) }).await;
        assert_eq!(later.unwrap().call_id, "C2");
    }

    #[tokio::test]
    async fn an_overlong_request_id_is_refused() {
        let ids = RequestIds::new(Duration::from_secs(60), 100);
        let long = "x".repeat(129);
        let outcome = ids.once("MakeCall", &long, async { Ok(MakeCallResponse::default()) }).await;
        assert_eq!(outcome.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
