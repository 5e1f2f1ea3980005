//! The user service: an in-memory store behind the generated `user.v1.UserService` trait.
//! Shared by the `user-service` example, the integration tests and the benchmark.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures::Stream;
use tonic::{Request, Response, Status};

/// Generated code of the `user.v1` package.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("user.v1");

    /// Encoded `FileDescriptorSet` of `user.v1`, for reflection and metrics.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/user_v1_descriptor.bin"));
}

use pb::user_service_server::UserService;
use pb::{CreateUserRequest, GetUserRequest, ListUsersRequest, User};

/// Users by id, with the next id to assign.
#[derive(Debug, Default)]
struct Store {
    users: BTreeMap<i64, User>,
    next_id: i64,
}

/// In-memory implementation of `user.v1.UserService`.
#[derive(Debug, Clone)]
pub struct Users {
    store: Arc<Mutex<Store>>,
    faults: bool,
}

/// Request metadata that makes `GetUser` fail with the named status code
/// (`unavailable`, `internal`, `not_found`, any gRPC code name) once faults
/// are enabled ([`Users::with_faults`]; the example reads
/// `EXAMPLE_FAULT_INJECTION=1`). For driving alerts and dashboards in tests
/// and demos; off by default, so no caller can make a real deployment fail.
pub const FAULT_HEADER: &str = "x-example-fail";

/// The code of a name as [`FAULT_HEADER`] takes it: a `grpc_code` label
/// value in any case, `_` and `-` ignored (`unavailable`, `not_found`).
fn code_named(name: &str) -> Option<tonic::Code> {
    let normalized: String =
        name.chars().filter(|c| *c != '_' && *c != '-').collect::<String>().to_lowercase();
    let index = grpc_contract::metrics::ALL_CODES.iter().position(|c| c.to_lowercase() == normalized)?;
    // ALL_CODES is in numeric order of the codes.
    i32::try_from(index).ok().map(tonic::Code::from)
}

impl Default for Users {
    fn default() -> Self {
        Self::with_seed()
    }
}

impl Users {
    /// A store holding `alice` (id 1, tag `admin`) and `bob` (id 2, tag `dev`).
    pub fn with_seed() -> Self {
        let users = Users {
            store: Arc::new(Mutex::new(Store { users: BTreeMap::new(), next_id: 1 })),
            faults: false,
        };
        users.insert("alice".into(), vec!["admin".into()]);
        users.insert("bob".into(), vec!["dev".into()]);
        users
    }

    /// Honour [`FAULT_HEADER`] when `enabled`.
    // Only the user-service example turns faults on; the other users of this
    // module (tests, benchmarks, the JWT example) never do.
    #[allow(dead_code)]
    #[must_use]
    pub fn with_faults(mut self, enabled: bool) -> Self {
        self.faults = enabled;
        self
    }

    fn insert(&self, name: String, tags: Vec<String>) -> User {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let id = store.next_id;
        store.next_id += 1;
        let user = User { id, name, tags };
        store.users.insert(id, user.clone());
        user
    }
}

type UserStream = Pin<Box<dyn Stream<Item = Result<User, Status>> + Send>>;

#[tonic::async_trait]
impl UserService for Users {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        if self.faults
            && let Some(code) =
                request.metadata().get(FAULT_HEADER).and_then(|v| v.to_str().ok()).and_then(code_named)
        {
            return Err(Status::new(code, "failure injected by x-example-fail"));
        }
        let id = request.get_ref().user_id;
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        match store.users.get(&id) {
            Some(user) => Ok(Response::new(user.clone())),
            None => Err(Status::not_found(format!("user {id} not found"))),
        }
    }

    async fn create_user(&self, request: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        let CreateUserRequest { name, tags } = request.into_inner();
        if name.trim().is_empty() {
            return Err(Status::invalid_argument("name: must not be empty"));
        }
        Ok(Response::new(self.insert(name, tags)))
    }

    type ListUsersStream = UserStream;

    async fn list_users(&self, request: Request<ListUsersRequest>) -> Result<Response<UserStream>, Status> {
        let ListUsersRequest { repeat, interval_ms } = request.into_inner();
        if !(0..=1000).contains(&repeat) {
            return Err(Status::invalid_argument("repeat: must be between 0 and 1000"));
        }
        if !(0..=60_000).contains(&interval_ms) {
            return Err(Status::invalid_argument("interval_ms: must be between 0 and 60000"));
        }
        let users: Vec<User> =
            self.store.lock().unwrap_or_else(PoisonError::into_inner).users.values().cloned().collect();
        let count = users.len() * usize::try_from(repeat.max(1)).unwrap_or(1);
        let all = users.into_iter().cycle().take(count);
        if interval_ms == 0 {
            return Ok(Response::new(Box::pin(futures::stream::iter(all.map(Ok)))));
        }
        let pause = std::time::Duration::from_millis(u64::from(interval_ms.unsigned_abs()));
        let paced = futures::stream::unfold((all, true), move |(mut rest, first)| async move {
            let user = rest.next()?;
            if !first {
                tokio::time::sleep(pause).await;
            }
            Some((Ok(user), (rest, false)))
        });
        Ok(Response::new(Box::pin(paced)))
    }
}
