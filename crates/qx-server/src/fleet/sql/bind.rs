//! A query built piece by piece with numbered parameters (`$1`, `$2`, …: both engines take
//! them), and the conversions between the store's values and its columns.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};

use crate::fleet::store::{FleetError, FleetResult};

/// A parameter value.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Int(i64),
    Text(String),
}

/// SQL text and its parameters, in order.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    text: String,
    values: Vec<Value>,
    /// Not kept in the connection's statement cache (see [`Sql::once`]).
    once: bool,
}

impl Sql {
    pub(crate) fn new(text: &str) -> Self {
        Sql {
            text: text.to_owned(),
            values: Vec::new(),
            once: false,
        }
    }

    /// A statement whose text varies with its rows (a group's `VALUES`, an `IN` list): not
    /// kept prepared, or a connection's cache would hold one of each size.
    pub(crate) fn once(&mut self) -> &mut Self {
        self.once = true;
        self
    }

    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a parameter's placeholder.
    pub(crate) fn bind(&mut self, v: Value) -> &mut Self {
        self.values.push(v);
        let n = self.values.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    pub(crate) fn int(&mut self, v: i64) -> &mut Self {
        self.bind(Value::Int(v))
    }

    pub(crate) fn text(&mut self, v: &str) -> &mut Self {
        self.bind(Value::Text(v.to_owned()))
    }

    /// A text parameter, or `NULL`.
    pub(crate) fn opt_text(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.text(v),
            None => self.push("NULL"),
        }
    }

    /// `(<$a>, <$b>, …)` of the given texts.
    pub(crate) fn list(&mut self, items: &[String]) -> &mut Self {
        self.push("(");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.text(item);
        }
        self.push(")")
    }

    pub(crate) fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text).persistent(!self.once);
        for v in &self.values {
            q = match v {
                Value::Int(i) => q.bind(*i),
                Value::Text(s) => q.bind(s.as_str()),
            };
        }
        q
    }
}

/// A host's sequence number as a column value (BIGINT is signed).
pub(crate) fn seq_value(seq: u64) -> FleetResult<i64> {
    i64::try_from(seq).map_err(|_| {
        FleetError::Invalid(format!(
            "event sequence number {seq} is above the highest the server stores ({})",
            i64::MAX
        ))
    })
}

/// A column value back as a sequence number (never negative: only [`seq_value`] writes it).
pub(crate) fn seq_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Text stored as JSON, as `T`.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> FleetResult<T> {
    serde_json::from_str(text)
        .map_err(|e| FleetError::Database(format!("the stored {what} is not valid JSON: {e}")))
}

/// `T` as JSON text.
pub(crate) fn to_json<T: serde::Serialize>(what: &str, v: &T) -> FleetResult<String> {
    serde_json::to_string(v)
        .map_err(|e| FleetError::Database(format!("{what} could not be written as JSON: {e}")))
}

/// A column of a row, typed.
pub(crate) fn get<'r, T>(row: &'r AnyRow, col: &str) -> FleetResult<T>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(col)
        .map_err(|e| FleetError::Database(format!("reading column {col}: {e}")))
}
