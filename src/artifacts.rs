//! Where uploaded and produced files live: an `object_store` (the local filesystem by default).
//! Uploads are written as multipart puts, which the local store stages and renames on
//! completion, so a half-written file is never visible under its final name.

use anyhow::Context;
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use object_store::{path::Path, ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Clone)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
}

/// Size and digest of a stored object.
#[derive(Debug, Clone)]
pub struct Stored {
    pub bytes: u64,
    pub sha256: String,
}

/// Where an object lives in the store (the layout below is the only place paths are spelled).
pub type Key = Path;

pub fn model_prefix(model_id: &str) -> String {
    format!("models/{model_id}")
}
pub fn model_path(model_id: &str, file: &str) -> Key {
    Path::from(format!("{}/{file}", model_prefix(model_id)))
}
pub fn dataset_prefix(dataset_id: &str) -> String {
    format!("datasets/{dataset_id}")
}
pub fn dataset_path(dataset_id: &str) -> Key {
    Path::from(format!("{}/data", dataset_prefix(dataset_id)))
}
pub fn job_prefix(job_id: &str) -> String {
    format!("jobs/{job_id}")
}
pub fn job_artifact_path(job_id: &str, name: &str) -> Key {
    Path::from(format!("{}/{name}", job_prefix(job_id)))
}
/// A job's own files for resuming (beside its artifacts, never listed as one).
pub fn scratch_prefix(job_id: &str) -> String {
    format!("{}/_scratch", job_prefix(job_id))
}
pub fn scratch_path(job_id: &str, name: &str) -> Key {
    Path::from(format!("{}/{name}", scratch_prefix(job_id)))
}

/// An in-progress streamed write that hashes what it writes.
pub struct Writer {
    inner: WriteMultipart,
    hasher: Sha256,
    bytes: u64,
}

impl Writer {
    pub async fn write(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        // Back-pressure: at most a few parts in flight, so memory stays bounded.
        self.inner.wait_for_capacity(2).await?;
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        self.inner.write(chunk);
        Ok(())
    }
    pub async fn finish(self) -> anyhow::Result<Stored> {
        self.inner.finish().await?;
        Ok(Stored { bytes: self.bytes, sha256: hex::encode(self.hasher.finalize()) })
    }
    pub async fn abort(self) {
        let _ = self.inner.abort().await;
    }
}

impl Artifacts {
    pub fn local(dir: &std::path::Path) -> anyhow::Result<Artifacts> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating artifact directory {}", dir.display()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
        Ok(Artifacts { store: Arc::new(fs) })
    }

    pub async fn writer(&self, path: &Path) -> anyhow::Result<Writer> {
        let upload = self.store.put_multipart(path).await?;
        Ok(Writer {
            inner: WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024),
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    pub async fn put(&self, path: &Path, data: Bytes) -> anyhow::Result<Stored> {
        let stored = Stored { bytes: data.len() as u64, sha256: hex::encode(Sha256::digest(&data)) };
        self.store.put(path, data.into()).await?;
        Ok(stored)
    }

    /// The object's bytes; `None` when there is no such object.
    pub async fn get(&self, path: &Path) -> anyhow::Result<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object as a stream of chunks and its size, for downloads; `None` when there is no
    /// such object.
    pub async fn get_stream(
        &self,
        path: &Path,
    ) -> anyhow::Result<Option<(u64, impl Stream<Item = std::io::Result<Bytes>> + Send + 'static)>> {
        match self.store.get(path).await {
            Ok(r) => {
                let size = r.meta.size;
                Ok(Some((size, r.into_stream().map_err(std::io::Error::other))))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete every object under `prefix` (a model, dataset or job folder).
    pub async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        let prefix = Path::from(prefix);
        let paths: Vec<Path> = self.store.list(Some(&prefix)).map_ok(|m| m.location).try_collect().await?;
        for p in paths {
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
