//! Read queries for the HTTP side that count and page in the database, so a
//! list page, `/status` and `/metrics` do not load every extension row per
//! request.
//!
//! "The extensions" are what [`Db::extensions`] returns: the applied rows,
//! and the status rows of extensions declared but never applied (with a
//! declared copy). Every query here counts or pages that same set.

use super::{Db, DbError, ExtensionRecord, SELECT_EXTENSIONS};
use std::collections::BTreeMap;

/// Every extension with its sync state: (number, st).
const LISTED: &str = "SELECT e.number AS number, COALESCE(s.status, 'synced') AS st FROM extensions e \
     LEFT JOIN extension_status s ON s.number = e.number \
     UNION ALL SELECT s.number AS number, s.status AS st FROM extension_status s WHERE s.declared IS NOT NULL \
     AND NOT EXISTS (SELECT 1 FROM extensions e WHERE e.number = s.number)";

/// One page of extensions (in number order) and how many match in all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtensionPage {
    pub total: usize,
    pub records: Vec<ExtensionRecord>,
}

impl Db {
    /// How many extensions are in each sync state (only states that occur).
    pub async fn sync_counts(&self) -> Result<BTreeMap<String, i64>, DbError> {
        let sql = format!("SELECT t.st, COUNT(*) FROM ({LISTED}) t GROUP BY t.st");
        let rows: Vec<(String, i64)> = super::on_pool!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await)?;
        Ok(rows.into_iter().collect())
    }

    /// How many of `numbers` are extensions (applied or declared).
    pub async fn count_extensions_among(&self, numbers: &[&str]) -> Result<i64, DbError> {
        let mut n = 0;
        for chunk in numbers.chunks(500) {
            let (c,): (i64,) = super::on_pool!(self, pool => {
                let mut qb = sqlx::QueryBuilder::new(format!("SELECT COUNT(*) FROM ({LISTED}) t WHERE t.number IN ("));
                let mut sep = qb.separated(", ");
                for number in chunk {
                    sep.push_bind(*number);
                }
                qb.push(")");
                qb.build_query_as().fetch_one(pool).await
            })?;
            n += c;
        }
        Ok(n)
    }

    /// The extensions in state `sync` (all when `None`), `offset` and at
    /// most `limit` of them, in number order.
    pub async fn extensions_page(
        &self,
        sync: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<ExtensionPage, DbError> {
        let filter = "WHERE (CAST($1 AS TEXT) IS NULL OR t.st = $1)";
        let count_sql = format!("SELECT COUNT(*) FROM ({LISTED}) t {filter}");
        let page_sql = format!("SELECT t.number FROM ({LISTED}) t {filter} ORDER BY t.number LIMIT $2 OFFSET $3");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let (total, numbers): ((i64,), Vec<(String,)>) = super::on_pool!(self, pool => {
            let total = sqlx::query_as(&count_sql).bind(sync).fetch_one(pool).await?;
            let numbers = sqlx::query_as(&page_sql).bind(sync).bind(limit).bind(offset).fetch_all(pool).await?;
            Ok::<_, sqlx::Error>((total, numbers))
        })?;
        let numbers: Vec<String> = numbers.into_iter().map(|(n,)| n).collect();
        Ok(ExtensionPage { total: usize::try_from(total.0).unwrap_or(0), records: self.records_of(&numbers).await? })
    }

    /// The extensions a search for `q` may match (number, display name,
    /// context or a label value, case-insensitive), as a superset the
    /// caller filters exactly; `None` when `q` is not one the database can
    /// pre-filter the same way on both backends (not plain ASCII letters,
    /// digits, space, `.`, `-` or `@`).
    pub async fn extensions_matching(&self, q: &str) -> Result<Option<Vec<ExtensionRecord>>, DbError> {
        if q.is_empty() || !q.bytes().all(|b| b.is_ascii_alphanumeric() || b" .-@".contains(&b)) {
            return Ok(None);
        }
        let like = format!("%{}%", q.to_ascii_lowercase());
        // Labels and the declared copy as JSON text: a superset (their keys
        // match too), which the exact filter afterwards narrows.
        let sql = "SELECT t.number FROM (SELECT e.number AS number FROM extensions e WHERE LOWER(e.number) LIKE $1 \
             OR LOWER(COALESCE(e.display_name, '')) LIKE $1 OR LOWER(e.context) LIKE $1 \
             OR LOWER(CAST(e.labels AS TEXT)) LIKE $1 \
             UNION ALL SELECT s.number AS number FROM extension_status s WHERE s.declared IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM extensions e WHERE e.number = s.number) \
             AND LOWER(CAST(s.declared AS TEXT)) LIKE $1) t ORDER BY t.number";
        let numbers: Vec<(String,)> =
            super::on_pool!(self, pool => sqlx::query_as(sql).bind(&like).fetch_all(pool).await)?;
        let numbers: Vec<String> = numbers.into_iter().map(|(n,)| n).collect();
        Ok(Some(self.records_of(&numbers).await?))
    }

    /// The records of `numbers` (applied or declared), in number order.
    async fn records_of(&self, numbers: &[String]) -> Result<Vec<ExtensionRecord>, DbError> {
        let mut out = Vec::with_capacity(numbers.len());
        for chunk in numbers.chunks(500) {
            let rows = super::on_pool!(self, pool => {
                let mut qb = sqlx::QueryBuilder::new(format!("{} WHERE e.number IN (", *SELECT_EXTENSIONS));
                let mut sep = qb.separated(", ");
                for n in chunk {
                    sep.push_bind(n.as_str());
                }
                qb.push(")");
                let rows = qb.build().fetch_all(pool).await?;
                rows.iter().map(ExtensionRecord::from_row).collect::<Result<Vec<_>, sqlx::Error>>()
            })?;
            out.extend(rows);
        }
        let applied: std::collections::HashSet<String> = out.iter().map(|r| r.number.clone()).collect();
        for n in numbers.iter().filter(|n| !applied.contains(*n)) {
            out.extend(self.unapplied(Some(n)).await?);
        }
        out.sort_by(|a, b| a.number.cmp(&b.number));
        Ok(out)
    }
}
