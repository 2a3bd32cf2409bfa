//! The Remote Workers API (`google.devtools.remoteworkers.v1test2.Bots`),
//! which BuildGrid's Bots service speaks: a bot opens a session with
//! CreateBotSession and then calls UpdateBotSession in a loop, each call
//! reporting its leases' states and long-polling for new leases.

use std::time::Duration;

use crate::client::Remote;
use crate::error::{Error, Result};
pub use crate::proto::google::devtools::remoteworkers::v1test2 as rwapi;
use rwapi::bots_client::BotsClient;

/// Slack added to a long-poll's own deadline before the call is abandoned
/// here (the server answers at 80% of the deadline it is given).
const SLACK: Duration = Duration::from_secs(5);

impl Remote {
    /// Bots.CreateBotSession under the instance; the server may hold the
    /// call up to `wait` to hand out a first lease.
    pub async fn create_bot_session(
        &self,
        session: rwapi::BotSession,
        wait: Duration,
    ) -> Result<rwapi::BotSession> {
        let mut c = BotsClient::new(self.channel());
        let mut req = tonic::Request::new(rwapi::CreateBotSessionRequest {
            parent: self.endpoint().instance.clone(),
            bot_session: Some(session),
        });
        req.set_timeout(wait);
        self.long_poll("CreateBotSession", wait, c.create_bot_session(req))
            .await
    }

    /// Bots.UpdateBotSession: reports `session`'s leases and returns the
    /// server's view (new leases, cancelled ones gone). With no lease
    /// running the server may hold the call up to `wait` for work.
    pub async fn update_bot_session(
        &self,
        session: rwapi::BotSession,
        wait: Duration,
    ) -> Result<rwapi::BotSession> {
        let mut c = BotsClient::new(self.channel());
        let mut req = tonic::Request::new(rwapi::UpdateBotSessionRequest {
            name: session.name.clone(),
            bot_session: Some(session),
            update_mask: None,
        });
        req.set_timeout(wait);
        self.long_poll("UpdateBotSession", wait, c.update_bot_session(req))
            .await
    }

    async fn long_poll<F>(
        &self,
        op: &'static str,
        wait: Duration,
        fut: F,
    ) -> Result<rwapi::BotSession>
    where
        F: std::future::Future<Output = Result<tonic::Response<rwapi::BotSession>, tonic::Status>>,
    {
        match tokio::time::timeout(wait + SLACK, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.status(op, s)),
            Err(_) => Err(Error::Timeout {
                endpoint: self.endpoint().to_string(),
                op,
                secs: (wait + SLACK).as_secs(),
            }),
        }
    }
}
