//! Tenants, API keys, models and datasets.

use super::{now_ms, Store};
use sqlx::Row;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ModelRow {
    pub id: String,
    pub tenant_id: String,
    pub name: Option<String>,
    pub model_type: String,
    pub num_layers: i64,
    pub hidden_size: i64,
    pub num_heads: i64,
    pub intermediate_size: i64,
    pub parameters: i64,
    pub dtype: String,
    pub bytes: i64,
    pub sha256: String,
    /// The stored files (a JSON array in the database).
    #[sqlx(try_from = "String")]
    pub files: ModelFiles,
    pub created_at: i64,
}

/// One stored file of a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ModelFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A model's files, stored as a JSON array in its row. A row that does not hold such an array
/// is a read error, not an empty list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelFiles(pub Vec<ModelFile>);

impl ModelFiles {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|f| f.name.as_str())
    }
    pub fn contains(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }
}

impl TryFrom<String> for ModelFiles {
    type Error = serde_json::Error;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        serde_json::from_str(&s).map(ModelFiles)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DatasetRow {
    pub id: String,
    pub tenant_id: String,
    pub name: Option<String>,
    pub format: String,
    pub task: Option<String>,
    pub num_rows: i64,
    /// JSON: columns and labels seen.
    pub summary: String,
    pub bytes: i64,
    pub sha256: String,
    pub created_at: i64,
}

/// Who a request authenticates as.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant_id: String,
    pub tenant_name: String,
    pub key_id: String,
    pub is_admin: bool,
}

/// Outcome of a guarded delete.
#[derive(Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    InUse,
}

const MODEL_COLS: &str = "id, tenant_id, name, model_type, num_layers, hidden_size, num_heads, intermediate_size, parameters, dtype, bytes, sha256, files, created_at";
const DATASET_COLS: &str = "id, tenant_id, name, format, task, num_rows, summary, bytes, sha256, created_at";

impl Store {
    /// The tenant with this name, created if missing. Returns its id.
    pub async fn ensure_tenant(&self, name: &str) -> anyhow::Result<String> {
        let id = uuid::Uuid::now_v7().to_string();
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(&id)
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT id FROM tenants WHERE name = $1").bind(name).fetch_one(&self.pool).await?;
        Ok(row.try_get("id")?)
    }

    pub async fn count_api_keys(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys").fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }

    pub async fn insert_api_key(
        &self,
        tenant_id: &str,
        key_hash: &str,
        prefix: &str,
        is_admin: bool,
    ) -> anyhow::Result<String> {
        let id = uuid::Uuid::now_v7().to_string();
        sqlx::query("INSERT INTO api_keys (id, tenant_id, key_hash, prefix, is_admin, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&id)
            .bind(tenant_id)
            .bind(key_hash)
            .bind(prefix)
            .bind(is_admin as i64)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    pub async fn find_principal(&self, key_hash: &str) -> anyhow::Result<Option<Principal>> {
        let row = sqlx::query(
            "SELECT k.id AS key_id, k.tenant_id, k.is_admin, t.name AS tenant_name FROM api_keys k \
             JOIN tenants t ON t.id = k.tenant_id WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => None,
            Some(r) => Some(Principal {
                tenant_id: r.try_get("tenant_id")?,
                tenant_name: r.try_get("tenant_name")?,
                key_id: r.try_get("key_id")?,
                is_admin: r.try_get::<i64, _>("is_admin")? != 0,
            }),
        })
    }

    pub async fn insert_model(&self, m: &ModelRow) -> anyhow::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO models ({MODEL_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&m.id)
        .bind(&m.tenant_id)
        .bind(&m.name)
        .bind(&m.model_type)
        .bind(m.num_layers)
        .bind(m.hidden_size)
        .bind(m.num_heads)
        .bind(m.intermediate_size)
        .bind(m.parameters)
        .bind(&m.dtype)
        .bind(m.bytes)
        .bind(&m.sha256)
        .bind(serde_json::to_string(&m.files.0)?)
        .bind(m.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_model(&self, tenant_id: &str, id: &str) -> anyhow::Result<Option<ModelRow>> {
        Ok(sqlx::query_as::<_, ModelRow>(&format!("SELECT {MODEL_COLS} FROM models WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Newest first; `before` is the last id of the previous page (ids are UUIDv7, so their
    /// text order is their creation order).
    pub async fn list_models(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<ModelRow>> {
        Ok(sqlx::query_as::<_, ModelRow>(&format!(
            "SELECT {MODEL_COLS} FROM models WHERE tenant_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(tenant_id)
        .bind(before.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Delete a model or dataset row unless a queued or running job reads it.
    pub async fn delete_resource(
        &self,
        table: ResourceTable,
        tenant_id: &str,
        id: &str,
    ) -> anyhow::Result<DeleteOutcome> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query(&format!("SELECT id FROM {} WHERE tenant_id = $1 AND id = $2", table.name()))
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Ok(DeleteOutcome::NotFound);
        }
        let in_use = sqlx::query(
            "SELECT j.id FROM job_inputs i JOIN jobs j ON j.id = i.job_id \
             WHERE i.resource_id = $1 AND j.status IN ('queued', 'running') LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if in_use.is_some() {
            return Ok(DeleteOutcome::InUse);
        }
        sqlx::query(&format!("DELETE FROM {} WHERE tenant_id = $1 AND id = $2", table.name()))
            .bind(tenant_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DeleteOutcome::Deleted)
    }

    pub async fn insert_dataset(&self, d: &DatasetRow) -> anyhow::Result<()> {
        sqlx::query(&format!("INSERT INTO datasets ({DATASET_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
            .bind(&d.id)
            .bind(&d.tenant_id)
            .bind(&d.name)
            .bind(&d.format)
            .bind(&d.task)
            .bind(d.num_rows)
            .bind(&d.summary)
            .bind(d.bytes)
            .bind(&d.sha256)
            .bind(d.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get_dataset(&self, tenant_id: &str, id: &str) -> anyhow::Result<Option<DatasetRow>> {
        Ok(sqlx::query_as::<_, DatasetRow>(&format!(
            "SELECT {DATASET_COLS} FROM datasets WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn list_datasets(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<DatasetRow>> {
        Ok(sqlx::query_as::<_, DatasetRow>(&format!(
            "SELECT {DATASET_COLS} FROM datasets WHERE tenant_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(tenant_id)
        .bind(before.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum ResourceTable {
    Models,
    Datasets,
}

impl ResourceTable {
    fn name(self) -> &'static str {
        match self {
            ResourceTable::Models => "models",
            ResourceTable::Datasets => "datasets",
        }
    }
}
