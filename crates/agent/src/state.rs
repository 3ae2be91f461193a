//! A task's state as the agent moves it: only forward, by a type that refuses to go
//! back.

use shoal_proto::objects::TaskState;

/// Refused move, e.g. RUNNING → PREPARING.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("task state cannot move back from {from:?} to {to:?}")]
pub struct Backwards {
    pub from: TaskState,
    pub to: TaskState,
}

/// The current state of a task on this node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskProgress(TaskState);

impl TaskProgress {
    pub fn new(state: TaskState) -> Self {
        TaskProgress(state)
    }
    pub fn state(&self) -> TaskState {
        self.0
    }
    /// Moves to `to`, which must be later than the current state.
    pub fn advance(&mut self, to: TaskState) -> Result<(), Backwards> {
        if (to as i32) <= (self.0 as i32) {
            return Err(Backwards { from: self.0, to });
        }
        self.0 = to;
        Ok(())
    }
    /// Whether nothing more can happen to the task.
    pub fn is_terminal(&self) -> bool {
        (self.0 as i32) >= TaskState::Complete as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    #[test]
    fn normal_life_moves_forward() {
        let mut p = TaskProgress::new(TaskState::Assigned);
        for s in [
            TaskState::Accepted,
            TaskState::Preparing,
            TaskState::Ready,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Complete,
        ] {
            p.advance(s).unwrap();
        }
        assert!(p.is_terminal());
        assert!(p.advance(TaskState::Running).is_err());
    }

    proptest! {
        #[test]
        fn states_never_go_back(moves in proptest::collection::vec(0usize..14, 0..40)) {
            let mut p = TaskProgress::new(TaskState::New);
            for m in moves {
                let before = p.state() as i32;
                let to = ALL[m];
                let r = p.advance(to);
                prop_assert_eq!(r.is_ok(), (to as i32) > before);
                prop_assert!(p.state() as i32 >= before);
            }
        }
    }
}
