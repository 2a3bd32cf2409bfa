//! Remote execution, the client side: Execution.Execute and the Operation
//! stream it answers with, resumed with WaitExecution when the server ends
//! the stream before the operation is done (BuildGrid ends it after its
//! `operation-stream-keepalive-timeout`, and a server may restart).

use std::time::Duration;

use prost::Message;
use tokio::time::Instant;

use crate::client::Remote;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::proto::google::longrunning::{operation, Operation};
use crate::reapi::{self, execution_client::ExecutionClient};

/// Largest ExecuteResponse accepted (it carries an ActionResult, which holds
/// digests and small inlined outputs only).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// How many times a broken Operation stream is resumed before giving up.
const MAX_RESUMES: u32 = 100;

impl Remote {
    /// Executes `action` and waits up to `limit` for it to finish. Returns the
    /// ExecuteResponse as the server sent it (its `status` and `result` are
    /// the caller's to judge) and the operation's name.
    pub async fn execute(
        &self,
        action: &Digest,
        skip_cache_lookup: bool,
        limit: Duration,
    ) -> Result<(reapi::ExecuteResponse, String)> {
        let deadline = Instant::now() + limit;
        let mut client =
            ExecutionClient::new(self.channel()).max_decoding_message_size(MAX_MESSAGE);
        let req = reapi::ExecuteRequest {
            instance_name: self.endpoint().instance.clone(),
            skip_cache_lookup,
            action_digest: Some(action.to_proto()),
            ..Default::default()
        };
        let mut stream = self.call("Execute", client.execute(req)).await?;
        let mut name = String::new();
        let mut resumes = 0;
        loop {
            let next = match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(n) => n,
                Err(_) => {
                    return Err(Error::Timeout {
                        endpoint: self.endpoint().to_string(),
                        op: "Execute",
                        secs: limit.as_secs(),
                    })
                }
            };
            match next {
                Ok(Some(op)) => {
                    if !op.name.is_empty() {
                        name.clone_from(&op.name);
                    }
                    if op.done {
                        return Ok((self.finished(op)?, name));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(s) if transient(s.code()) => {}
                Err(s) => return Err(self.status("Execute", s)),
            }
            // The stream ended before the operation did: wait on it again.
            if name.is_empty() {
                return Err(Error::Protocol {
                    what: "Operation stream",
                    why: "it ended before naming the operation".into(),
                });
            }
            resumes += 1;
            if resumes > MAX_RESUMES {
                return Err(Error::Protocol {
                    what: "Operation stream",
                    why: format!("it broke {MAX_RESUMES} times while waiting for {name}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let req = reapi::WaitExecutionRequest { name: name.clone() };
            stream = self
                .call("WaitExecution", client.wait_execution(req))
                .await?;
        }
    }

    /// The ExecuteResponse of a finished operation.
    fn finished(&self, op: Operation) -> Result<reapi::ExecuteResponse> {
        match op.result {
            Some(operation::Result::Response(any)) => {
                reapi::ExecuteResponse::decode(any.value.as_slice()).map_err(|e| Error::Protocol {
                    what: "ExecuteResponse",
                    why: e.to_string(),
                })
            }
            Some(operation::Result::Error(st)) => Err(Error::Rpc {
                endpoint: self.endpoint().to_string(),
                op: "Execute",
                code: tonic::Code::from_i32(st.code),
                message: st.message,
            }),
            None => Err(Error::Protocol {
                what: "Operation",
                why: format!(
                    "{} is done but has neither a response nor an error",
                    op.name
                ),
            }),
        }
    }
}

/// Stream errors after which the operation is waited on again.
fn transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::Internal
    )
}
