//! The few calls this backend makes to Pulsar's admin REST API (the broker's web port): a
//! subscription's backlog, from the topic's stats (`msgBacklog`). Plain `http://` only; with a
//! token, it is sent as `Authorization: Bearer`.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use worker_core::BrokerError;

use super::options::Token;
use super::BACKEND;

/// Pulsar's admin API at one base URL.
#[derive(Clone, Debug)]
pub(super) struct Admin {
    /// `host:port`.
    authority: String,
    token: Option<Token>,
    timeout: std::time::Duration,
}

impl Admin {
    /// The admin API at `url` (`http://host:port`), or why it cannot be used.
    pub fn new(
        url: &str,
        token: Option<Token>,
        timeout: std::time::Duration,
    ) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "admin url {url:?} must start with http:// (TLS to the admin API is not supported)"
            ));
        };
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("admin url {url:?} must be http://host:port"));
        }
        Ok(Admin {
            authority,
            token,
            timeout,
        })
    }

    /// The backlog of `subscription` on `topic` (a full Pulsar topic name); `None` when the
    /// broker does not know the topic or the subscription.
    pub async fn backlog(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<Option<u64>, BrokerError> {
        let path = stats_path(topic).ok_or_else(|| BrokerError::Rejected {
            backend: BACKEND,
            reason: format!("`{topic}` is not a full pulsar topic name"),
        })?;
        let Some(stats) = self.get(&path).await? else {
            return Ok(None);
        };
        let stats: serde_json::Value = serde_json::from_slice(&stats).map_err(|error| {
            BrokerError::backend(BACKEND, format!("read the stats of {topic}"), error)
        })?;
        Ok(stats["subscriptions"][subscription]["msgBacklog"].as_u64())
    }

    /// `GET path`: the body on 200, `None` on 404.
    async fn get(&self, path: &str) -> Result<Option<Bytes>, BrokerError> {
        let failed =
            |what: &str, error: Box<dyn std::error::Error + Send + Sync>| BrokerError::Connection {
                backend: BACKEND,
                message: format!("admin api {what} ({}{path})", self.authority),
                source: Some(error),
            };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| failed("connect", e.into()))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| failed("handshake", e.into()))?;
            tokio::spawn(connection);
            let mut request = Request::get(path).header(HOST, &self.authority);
            if let Some(token) = &self.token {
                request = request.header(AUTHORIZATION, format!("Bearer {}", token.expose()));
            }
            let request = request
                .body(Empty::<Bytes>::new())
                .map_err(|e| failed("request", e.into()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| failed("request", e.into()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| failed("response", e.into()))?
                .to_bytes();
            match status {
                StatusCode::OK => Ok(Some(body)),
                StatusCode::NOT_FOUND => Ok(None),
                other => Err(BrokerError::Backend {
                    backend: BACKEND,
                    message: format!("admin api answered {other} to GET {path}"),
                    source: None,
                }),
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Timeout {
                backend: BACKEND,
                operation: "admin api",
                millis: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }
}

/// `/admin/v2/{persistent|non-persistent}/{tenant}/{namespace}/{topic}/stats`.
fn stats_path(topic: &str) -> Option<String> {
    let (domain, rest) = topic.split_once("://")?;
    if !matches!(domain, "persistent" | "non-persistent") || rest.split('/').count() != 3 {
        return None;
    }
    Some(format!("/admin/v2/{domain}/{rest}/stats"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_base_urls_are_taken() {
        let timeout = std::time::Duration::from_secs(1);
        assert!(Admin::new("http://127.0.0.1:8080", None, timeout).is_ok());
        assert!(Admin::new("http://127.0.0.1:8080/", None, timeout).is_ok());
        assert!(Admin::new("https://pulsar:8443", None, timeout)
            .unwrap_err()
            .contains("TLS"));
        assert!(Admin::new("http://host:80/admin", None, timeout).is_err());
    }

    #[test]
    fn stats_paths_follow_the_topic_domain() {
        assert_eq!(
            stats_path("persistent://t/ns/orders").as_deref(),
            Some("/admin/v2/persistent/t/ns/orders/stats")
        );
        assert_eq!(
            stats_path("non-persistent://t/ns/o").as_deref(),
            Some("/admin/v2/non-persistent/t/ns/o/stats")
        );
        assert_eq!(stats_path("q1/t/ns/o"), None);
    }
}
