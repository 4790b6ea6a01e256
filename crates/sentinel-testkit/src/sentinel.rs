//! A real Sentinel-managed Redis on loopback: a primary, a replica and
//! three sentinels, all `redis-server` child processes.
//!
//! [`RedisSentinels::start`] starts the primary, a replica of it
//! (`--replicaof`), and three sentinels (`redis-server CONF --sentinel`)
//! monitoring the primary under [`SERVICE`] with a quorum of 2, and waits
//! until every sentinel knows the replica and the two other sentinels.
//! A primary is judged down after 1 s, so when it is killed the replica is
//! promoted within a few seconds ([`RedisSentinels::wait_for_failover`]).
//! Dropping it kills every process and removes their directories.
//!
//! ```no_run
//! use sentinel_testkit::RedisSentinels;
//!
//! let mut redis = RedisSentinels::start()?;
//! // fred's sentinel URL: a sentinel, the others as `node=` parameters.
//! assert!(redis.url().starts_with("redis-sentinel://127.0.0.1:"));
//! let primary = redis.primary()?;
//! redis.stop_data_node(primary);
//! let promoted = redis.wait_for_failover(primary)?;
//! assert_ne!(promoted, primary);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use crate::redis::{RedisServer, RespValue, Spec};
use crate::tls::TestCerts;

/// The name the sentinels monitor the primary under.
pub const SERVICE: &str = "sentinel-test";

/// How long the group has to form, or to fail over.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(30);

/// A primary, its replica and three sentinels on `127.0.0.1`.
#[derive(Debug)]
pub struct RedisSentinels {
    /// The data nodes: the first primary, then its replica.
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
    /// The data nodes' password.
    password: Option<String>,
    /// Whether every node also takes TLS, and they talk TLS among
    /// themselves.
    tls: bool,
}

impl RedisSentinels {
    /// Starts a primary, one replica and three sentinels, and waits until
    /// the replica is in sync and every sentinel sees the whole group.
    pub fn start() -> io::Result<Self> {
        Self::start_as(None, None)
    }

    /// [`start`](Self::start) with data nodes that ask for `password`
    /// (`requirepass`; the sentinels know it, and ask for none
    /// themselves, the usual set-up). [`url`](Self::url) carries it.
    pub fn start_with_password(password: &str) -> io::Result<Self> {
        Self::start_as(Some(password), None)
    }

    /// [`start`](Self::start) with every node, sentinels too, also taking
    /// TLS connections with the server certificate of `certs` (no client
    /// certificates asked), and talking TLS among themselves
    /// (`tls-replication`): the sentinels name the data nodes' TLS ports,
    /// and [`url`](Self::url) is a `rediss-sentinel://` URL of the
    /// sentinels' TLS ports. Plain ports stay open for
    /// [`RedisServer::query`].
    pub fn start_tls(certs: &TestCerts) -> io::Result<Self> {
        Self::start_as(None, Some(certs))
    }

    fn start_as(password: Option<&str>, certs: Option<&TestCerts>) -> io::Result<Self> {
        let data_node = |mut extra: Vec<String>| {
            if certs.is_some() {
                extra.extend(["--tls-replication", "yes"].map(str::to_owned));
            }
            Spec {
                extra,
                tls: certs.map(|certs| (certs, false)),
                password: password.map(str::to_owned),
                ..Spec::default()
            }
            .start()
        };
        // Where the others reach a node: its TLS port when there is one.
        let reach = |node: &RedisServer| node.tls_port().unwrap_or(node.port());
        let primary = data_node(Vec::new())?;
        let replica = data_node(
            [
                "--replicaof",
                "127.0.0.1",
                &reach(&primary).to_string(),
                "--repl-diskless-sync-delay",
                "0",
            ]
            .map(str::to_owned)
            .to_vec(),
        )?;
        let mut conf = format!(
            "sentinel monitor {SERVICE} 127.0.0.1 {port} 2\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 3000\n\
             sentinel parallel-syncs {SERVICE} 1\n",
            port = reach(&primary)
        );
        if certs.is_some() {
            conf.push_str("tls-replication yes\n");
        }
        if let Some(password) = password {
            conf.push_str(&format!("sentinel auth-pass {SERVICE} {password}\n"));
        }
        let mut group = RedisSentinels {
            data: vec![primary, replica],
            sentinels: Vec::new(),
            password: password.map(str::to_owned),
            tls: certs.is_some(),
        };
        for _ in 0..3 {
            group.sentinels.push(
                Spec {
                    tls: certs.map(|certs| (certs, false)),
                    sentinel_conf: Some(conf.clone()),
                    ..Spec::default()
                }
                .start()?,
            );
        }
        group.wait_until(|g| {
            g.data[1]
                .query(&["INFO", "replication"])
                .ok()
                .and_then(|v| v.as_str().map(|s| s.contains("master_link_status:up")))
                .unwrap_or(false)
                && g.sentinels.iter().all(|s| {
                    array_len(s.query(&["SENTINEL", "REPLICAS", SERVICE])) == Some(1)
                        && array_len(s.query(&["SENTINEL", "SENTINELS", SERVICE])) == Some(2)
                })
        })?;
        Ok(group)
    }

    /// fred's sentinel URL:
    /// `redis-sentinel://[:PASSWORD@]127.0.0.1:S0?sentinelServiceName=sentinel-test&node=127.0.0.1:S1&...`
    /// (the password is the data nodes'), or over TLS
    /// `rediss-sentinel://127.0.0.1:TLS0?...` for a group started with
    /// [`start_tls`](Self::start_tls).
    pub fn url(&self) -> String {
        let tls = self.tls;
        let mut nodes = self.sentinels.iter().map(|n| {
            let port = if tls { n.tls_port() } else { None };
            format!("127.0.0.1:{}", port.unwrap_or(n.port()))
        });
        let first = nodes.next().unwrap_or_default();
        let rest: String = nodes.map(|n| format!("&node={n}")).collect();
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        let scheme = if tls {
            "rediss-sentinel"
        } else {
            "redis-sentinel"
        };
        format!("{scheme}://{auth}{first}?sentinelServiceName={SERVICE}{rest}")
    }

    /// The data nodes: index 0 was the first primary, 1 its replica.
    pub fn data_nodes(&self) -> &[RedisServer] {
        &self.data
    }

    /// The sentinels.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The index of the data node the running sentinels name as primary.
    pub fn primary(&self) -> io::Result<usize> {
        let mut last = io::Error::other("no sentinel is running");
        for sentinel in self.sentinels.iter().filter(|s| s.is_running()) {
            match self.primary_per(sentinel) {
                Ok(i) => return Ok(i),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Kills data node `i` (when it is the primary, the sentinels promote
    /// the other).
    pub fn stop_data_node(&mut self, i: usize) {
        if let Some(node) = self.data.get_mut(i) {
            node.stop();
        }
    }

    /// Waits until every sentinel names a running data node other than
    /// `stopped` as primary and that node says it is a master; returns its
    /// index.
    pub fn wait_for_failover(&self, stopped: usize) -> io::Result<usize> {
        self.wait_until(|g| g.promoted(stopped).is_some())?;
        self.promoted(stopped)
            .ok_or_else(|| io::Error::other("the promoted primary went away"))
    }

    /// Without waiting: the index of the data node promoted in place of
    /// `stopped`, once every sentinel names it and it says it is a master.
    pub fn promoted(&self, stopped: usize) -> Option<usize> {
        let named: Vec<usize> = self
            .sentinels
            .iter()
            .map(|s| self.primary_per(s).ok())
            .collect::<Option<_>>()?;
        let first = *named.first()?;
        let agreed = named.iter().all(|i| *i == first);
        let node = self.data.get(first)?;
        let is_master = matches!(
            node.query(&["ROLE"]),
            Ok(RespValue::Array(Some(role)))
                if role.first().and_then(RespValue::as_str) == Some("master")
        );
        (agreed && first != stopped && node.is_running() && is_master).then_some(first)
    }

    /// The data node `sentinel` names as primary.
    fn primary_per(&self, sentinel: &RedisServer) -> io::Result<usize> {
        let answer = sentinel.query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])?;
        let port = match &answer {
            RespValue::Array(Some(addr)) => addr.get(1).and_then(RespValue::as_str),
            _ => None,
        }
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected sentinel answer {answer:?}")))?;
        self.data
            .iter()
            .position(|n| n.port() == port || n.tls_port() == Some(port))
            .ok_or_else(|| io::Error::other(format!("the sentinel names port {port}")))
    }

    fn wait_until(&self, ready: impl Fn(&Self) -> bool) -> io::Result<()> {
        let deadline = Instant::now() + SENTINEL_TIMEOUT;
        while !ready(self) {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the Sentinel-managed Redis did not settle",
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

fn array_len(answer: io::Result<RespValue>) -> Option<usize> {
    match answer {
        Ok(RespValue::Array(Some(items))) => Some(items.len()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentinels_promote_the_replica_when_the_primary_dies() {
        let mut group = RedisSentinels::start().unwrap();
        assert_eq!(group.data_nodes().len(), 2);
        assert_eq!(group.sentinels().len(), 3);
        let url = group.url();
        assert!(url.starts_with("redis-sentinel://127.0.0.1:"), "{url}");
        assert!(
            url.contains(&format!("sentinelServiceName={SERVICE}")),
            "{url}"
        );
        assert_eq!(url.matches("node=").count(), 2, "{url}");

        let primary = group.primary().unwrap();
        assert_eq!(primary, 0);
        // Data written on the primary reaches the replica.
        let nodes = group.data_nodes();
        assert_eq!(
            nodes[0].query(&["SET", "k", "v"]).unwrap(),
            RespValue::Simple("OK".into())
        );
        assert_eq!(
            nodes[0].query(&["WAIT", "1", "5000"]).unwrap(),
            RespValue::Integer(1)
        );
        // Replication is asynchronous: the replica applies it soon after.
        let deadline = Instant::now() + Duration::from_secs(10);
        while nodes[1].query(&["GET", "k"]).unwrap().as_str() != Some("v") {
            assert!(Instant::now() < deadline, "the replica never got the key");
            thread::sleep(Duration::from_millis(20));
        }

        group.stop_data_node(primary);
        let promoted = group.wait_for_failover(primary).unwrap();
        assert_eq!(promoted, 1);
        assert_eq!(group.primary().unwrap(), 1);
        assert_eq!(
            group.data_nodes()[1].query(&["GET", "k"]).unwrap().as_str(),
            Some("v")
        );
    }
}
