//! The store a command works on, from the flags: RocksDB over the data dir alone, or, with
//! the cluster flags, a cluster host's cache of it over S3 and etcd.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chaserfs_cluster::{Cluster, ClusterConfig, EtcdSecurity};
use chaserfs_engine::{Store, StoreOptions};

use crate::ClusterArgs;

/// A cluster joined: this host's name and the cluster.
pub(crate) type Joined = (String, Arc<Cluster>);

impl ClusterArgs {
    /// Joins the cluster the flags name, if they name one: (this host's name, the cluster).
    fn join(&self, listen: &str) -> anyhow::Result<Option<Joined>> {
        let Some(endpoint) = &self.s3_endpoint else {
            return Ok(None);
        };
        let host = self.host_name.clone().unwrap_or_else(|| {
            let port = listen.rsplit(':').next().unwrap_or("7878");
            format!("{}:{port}", hostname())
        });
        let env = |name: &str| {
            std::env::var(name).with_context(|| format!("{name} is needed to reach S3"))
        };
        let config = ClusterConfig {
            s3_endpoint: endpoint.clone(),
            s3_bucket: self.s3_bucket.clone().unwrap_or_default(),
            s3_region: self.s3_region.clone(),
            s3_access_key: env("AWS_ACCESS_KEY_ID")?,
            s3_secret_key: env("AWS_SECRET_ACCESS_KEY")?,
            etcd_endpoints: self.etcd_endpoints.clone().unwrap_or_default(),
            etcd_prefix: self.etcd_prefix.clone(),
            host: host.clone(),
            lease_ttl: Duration::from_secs(self.lease_ttl.max(2)),
            request_timeout: Duration::from_secs(self.request_timeout.max(1)),
            etcd_security: EtcdSecurity {
                user: match &self.etcd_user {
                    Some(user) => Some((
                        user.clone(),
                        std::env::var("CHASER_ETCD_PASSWORD")
                            .context("CHASER_ETCD_PASSWORD is needed with --etcd-user")?,
                    )),
                    None => None,
                },
                ca_file: self.etcd_ca_file.clone(),
                cert_key_files: self.etcd_cert_file.clone().zip(self.etcd_key_file.clone()),
            },
        };
        let cluster =
            Cluster::connect(&config).map_err(|e| anyhow::anyhow!("joining the cluster: {e}"))?;
        Ok(Some((host, cluster)))
    }

    /// The store over `data_dir`: RocksDB alone, or a cluster host's cache of it.
    pub(crate) fn open_store(
        &self,
        data_dir: &Path,
        listen: &str,
    ) -> anyhow::Result<(Arc<Store>, Option<Joined>)> {
        match self.join(listen)? {
            // Opening the store creates the data dir (durably) on first start.
            None => Ok((Store::open(data_dir).context("opening the data dir")?, None)),
            Some((host, cluster)) => {
                std::fs::create_dir_all(data_dir)?;
                let store = Store::open_cluster(
                    &data_dir.join("cache"),
                    StoreOptions::default(),
                    cluster.clone(),
                    self.cache_size,
                )
                .context("opening the object cache")?;
                Ok((store, Some((host, cluster))))
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
