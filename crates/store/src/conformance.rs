//! openraft's storage conformance suite, run against the redb log store and
//! state machine (DESIGN.md §5 requires it to pass).

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb};
use tempfile::TempDir;

use crate::db::{Db, FILE_NAME};
use crate::log_store::LogStore;
use crate::raft::{storage_error, StorageError, TypeConfig};
use crate::state_machine::StateMachine;
use crate::watch::Hub;

/// Builds a fresh store in its own temporary directory for each test case.
struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir()
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let db = Db::open(
            &dir.path().join(FILE_NAME),
            crate::seal::KeyFiles::new(dir.path())
                .create(&crate::Kek::Local)
                .expect("key"),
        )
        .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let db = Arc::new(db);
        let sm = StateMachine::new(db.clone(), Arc::new(Hub::new()));
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn redb_storage_passes_openraft_conformance_suite() {
    if let Err(e) = Suite::test_all(RedbBuilder) {
        panic!("openraft storage conformance failed: {e}");
    }
}
