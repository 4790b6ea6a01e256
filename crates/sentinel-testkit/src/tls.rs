//! Certificates for TLS tests, made with the `openssl` command line tool:
//! a throw-away CA, a server certificate it signed for `127.0.0.1` and
//! `localhost` (IP and DNS subject alternative names; also good as a
//! client certificate, as the nodes of a Redis Cluster on TLS present it
//! to each other), and a client certificate it signed. ECDSA P-256 keys in PKCS#8 PEM files, valid for
//! two days, in a fresh temporary directory removed on drop.
//!
//! ```no_run
//! use sentinel_testkit::{RedisServer, TestCerts};
//!
//! let certs = TestCerts::generate()?;
//! // A Redis taking TLS connections and asking clients for a certificate.
//! let redis = RedisServer::start_tls(&certs, true)?;
//! assert!(redis.tls_url().is_some_and(|url| url.starts_with("rediss://127.0.0.1:")));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::redis::fresh_temp_dir;

/// A CA and the server and client certificates it signed, as PEM files.
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Makes a new CA and signs a server and a client certificate with it.
    ///
    /// Fails if `openssl` is not on `PATH` (the test script installs it).
    pub fn generate() -> io::Result<Self> {
        let certs = TestCerts {
            dir: fresh_temp_dir()?,
        };
        certs.new_key(true, "ca.key", "ca.pem", "/CN=Sentinel test CA")?;
        certs.sign(
            "server",
            "/CN=localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        certs.sign(
            "client",
            "/CN=sentinel-client",
            "extendedKeyUsage=clientAuth\n",
        )?;
        Ok(certs)
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate (PEM), for `127.0.0.1` and `localhost`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The client certificate (PEM).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client's private key (PEM).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// A key and a certificate for `subject`, signed by the CA, with the
    /// extensions `ext` (an `openssl x509 -extfile`).
    fn sign(&self, name: &str, subject: &str, ext: &str) -> io::Result<()> {
        let (key, csr, pem, ext_file) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.dir.join(&ext_file),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}"),
        )?;
        self.new_key(false, &key, &csr, subject)?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ])
    }

    /// A new P-256 key in `key`, and in `out` a certificate request for
    /// `subject`, or with `self_signed` a certificate valid for two days.
    fn new_key(&self, self_signed: bool, key: &str, out: &str, subject: &str) -> io::Result<()> {
        let mut args = vec!["req"];
        if self_signed {
            args.extend(["-x509", "-days", "2"]);
        }
        args.extend([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ]);
        args.extend(["-keyout", key, "-out", out, "-subj", subject]);
        self.openssl(&args)
    }

    fn openssl(&self, args: &[&str]) -> io::Result<()> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("openssl could not run ({e}); the test script installs it"),
                )
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "openssl {} failed: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_takes_tls_with_the_generated_certificates() {
        let certs = TestCerts::generate().unwrap();
        for file in [
            certs.ca(),
            certs.server_cert(),
            certs.server_key(),
            certs.client_cert(),
            certs.client_key(),
        ] {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{file:?}: {text}");
        }
        let redis = crate::RedisServer::start_tls(&certs, true).unwrap();
        let tls_port = redis.tls_port().unwrap();
        assert_ne!(tls_port, redis.port());
        // The plain port answers; the TLS port verifies with the CA and
        // the client certificate (redis-cli speaks TLS with --tls).
        let ping = |extra: &[&str]| {
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &tls_port.to_string(), "--tls"])
                .arg("--cacert")
                .arg(certs.ca())
                .args(extra)
                .arg("PING")
                .output()
                .unwrap()
        };
        let cert = certs.client_cert().to_string_lossy().into_owned();
        let key = certs.client_key().to_string_lossy().into_owned();
        let with_cert = ping(&["--cert", &cert, "--key", &key]);
        assert_eq!(String::from_utf8_lossy(&with_cert.stdout).trim(), "PONG");
        let without = ping(&[]);
        assert_ne!(String::from_utf8_lossy(&without.stdout).trim(), "PONG");
    }
}
