//! The error type inside a query body: diesel's, the pool's, or an answer already decided
//! (`NotFound`, `Conflict`, …). It exists because diesel transactions need an error type that
//! converts from `diesel::result::Error`, and `paastech_core::Error` cannot (orphan rule).
//! Only `From<StoreError> for Error` leaves this crate, and it never shows SQL to users.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use paastech_core::Error;

#[derive(Debug)]
pub(crate) enum StoreError {
    Db(DieselError),
    Pool(diesel::r2d2::PoolError),
    Core(Error),
    /// A concurrent writer won a race the transaction can simply run again.
    Retry,
}

impl StoreError {
    /// Whether running the whole transaction again may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Retry | StoreError::Db(DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _))
        )
    }
}

impl From<DieselError> for StoreError {
    fn from(e: DieselError) -> Self {
        StoreError::Db(e)
    }
}

impl From<diesel::r2d2::PoolError> for StoreError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        StoreError::Pool(e)
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        StoreError::Core(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Core(e) => e,
            StoreError::Db(e) => Error::internal("database error", e),
            StoreError::Pool(e) => Error::internal("database unavailable", e),
            StoreError::Retry => Error::internal_msg("database busy: too many concurrent writes, try again"),
        }
    }
}

/// Maps a unique-constraint violation to `Conflict(message)`; other errors pass through.
pub(crate) fn conflict_on_unique(message: impl Into<String>) -> impl FnOnce(DieselError) -> StoreError {
    move |e| match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
            StoreError::Core(Error::Conflict(message.into()))
        }
        e => StoreError::Db(e),
    }
}

/// Maps a foreign-key violation to `NotFound(message)`: the row it points at is gone.
pub(crate) fn not_found_on_fk(message: &'static str) -> impl FnOnce(DieselError) -> StoreError {
    move |e| match e {
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
            StoreError::Core(Error::NotFound(message.to_owned()))
        }
        e => StoreError::Db(e),
    }
}

/// An insert's failure as the caller should hear it: the row it points at is gone
/// (`NotFound(missing)`), or a unique value is taken (`Conflict(taken)`).
pub(crate) fn missing_or_taken(
    missing: &'static str,
    taken: impl Into<String>,
) -> impl FnOnce(DieselError) -> StoreError {
    move |e| match e {
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => not_found(missing),
        e => conflict_on_unique(taken)(e),
    }
}

pub(crate) fn not_found(message: impl Into<String>) -> StoreError {
    StoreError::Core(Error::NotFound(message.into()))
}
