//! The registry of relying parties: static clients from the configuration, the rest in the
//! store, read through a small cache, and — when `client_metadata_hosts` is set — clients
//! whose id is the https URL of their metadata document ([`crate::client_metadata`]), fetched
//! rather than stored. It sits above the store, which persists the clients' records
//! ([`Client`]) without knowing the registry.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tailpass_verify::UnixTime;

use crate::client_metadata::{DocumentError, Documents, is_document_url};
use crate::clients::{Client, ClientId, ClientOrigin, ValidMetadata};
use crate::secret::Secret;
use crate::store::{Store, StoreError};

/// A client just created or given a new secret, with the secrets in clear for the one
/// response that shows them.
#[derive(Debug)]
pub struct Issued {
    /// The client as stored.
    pub client: Client,
    /// The client secret, for confidential clients.
    pub secret: Option<Secret>,
    /// The RFC 7592 registration access token, for dynamic clients.
    pub registration_token: Option<Secret>,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientsError {
    /// Occurs when the client does not exist.
    #[error("no such client")]
    NotFound,
    /// Occurs when trying to change a client defined in the configuration file.
    #[error("client {0} is defined in the configuration file; edit the file instead")]
    Static(ClientId),
    /// Occurs when the store fails.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a client could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Occurs when the store fails.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Occurs when the client id is a metadata document's URL that cannot be used.
    #[error(transparent)]
    Document(#[from] DocumentError),
}

/// How long a stored client is served from memory before it is read again. Changes made
/// through this process take effect at once; the delay only bounds how long another replica's
/// change can go unseen.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// The most clients kept in memory.
const CACHE_SIZE: usize = 4_096;

/// Finds and changes clients: static ones from the configuration, the rest in the store.
pub struct Clients {
    statics: HashMap<ClientId, Arc<Client>>,
    store: Arc<dyn Store>,
    cache: RwLock<HashMap<ClientId, (Arc<Client>, Instant)>>,
    documents: Option<Documents>,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients")
            .field("statics", &self.statics.len())
            .finish_non_exhaustive()
    }
}

impl Clients {
    /// A registry over `store`, with `statics` from the configuration taking precedence.
    pub fn new(statics: Vec<Client>, store: Arc<dyn Store>) -> Clients {
        Clients {
            statics: statics
                .into_iter()
                .map(|c| (c.client_id.clone(), Arc::new(c)))
                .collect(),
            store,
            cache: RwLock::new(HashMap::new()),
            documents: None,
        }
    }

    /// This registry, also finding clients by metadata document under `documents` (when
    /// they are [`Documents::enabled`]).
    pub fn with_documents(mut self, documents: Documents) -> Clients {
        self.documents = documents.enabled().then_some(documents);
        self
    }

    /// Whether clients may be identified by metadata documents (discovery says so).
    pub fn documents_enabled(&self) -> bool {
        self.documents.is_some()
    }

    /// The client with this id. A metadata document that cannot be used is logged and
    /// answered as no client; `/authorize`, which shows the person why, uses
    /// [`Clients::lookup`].
    pub async fn get(&self, id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        match self.lookup(id).await {
            Ok(found) => Ok(found),
            Err(LookupError::Store(e)) => Err(e),
            Err(LookupError::Document(e)) => {
                tracing::debug!(error = %e, "client metadata document not used");
                Ok(None)
            }
        }
    }

    /// The client with this id: static, stored, or — for an https URL when documents are
    /// on and no registered client has that id — described by its metadata document.
    pub async fn lookup(&self, id: &str) -> Result<Option<Arc<Client>>, LookupError> {
        if let Some(documents) = &self.documents
            && is_document_url(id)
            && !self.statics.contains_key(&ClientId(id.to_owned()))
        {
            return Ok(Some(documents.client(id, UnixTime::now()).await?));
        }
        Ok(self.registered(id).await?)
    }

    /// A static or stored client, never a metadata document's: for callers that only act on
    /// what a registration holds (back-channel logout, which documents never carry), so
    /// that they fetch nothing.
    pub async fn registered(&self, id: &str) -> Result<Option<Arc<Client>>, StoreError> {
        let key = ClientId(id.to_owned());
        if let Some(found) = self.statics.get(&key) {
            return Ok(Some(found.clone()));
        }
        if let Some((client, at)) = self.cache.read().ok().and_then(|c| c.get(&key).cloned())
            && at.elapsed() < CACHE_TTL
        {
            return Ok(Some(client));
        }
        let found = self.store.client(&key).await?.map(Arc::new);
        if let (Some(client), Ok(mut cache)) = (&found, self.cache.write()) {
            if cache.len() >= CACHE_SIZE {
                cache.clear();
            }
            cache.insert(key, (client.clone(), Instant::now()));
        }
        Ok(found)
    }

    fn forget(&self, id: &ClientId) {
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(id);
        }
    }

    /// Every client, static ones first.
    pub async fn list(&self) -> Result<Vec<Client>, StoreError> {
        let mut all: Vec<Client> = self.statics.values().map(|c| (**c).clone()).collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all.extend(self.store.clients().await?);
        Ok(all)
    }

    /// Registers a new client from validated metadata and its access rule `users` (empty:
    /// any tailnet user), generating its id, its secret (unless public) and, for dynamic
    /// registration, its registration access token. One write: a client never exists, even
    /// for a moment or after a failure, without the access rule it was created with.
    pub async fn create(
        &self,
        meta: ValidMetadata,
        users: Vec<String>,
        origin: ClientOrigin,
        now: UnixTime,
        created_by: Option<String>,
    ) -> Result<Issued, ClientsError> {
        let mut client = Client::from_metadata(ClientId::generate(), meta, origin, now, created_by);
        client.users = users;
        let secret = (!client.is_public()).then(Secret::generate);
        client.secret_sha256 = secret.as_ref().map(Secret::hash);
        let registration_token = (origin == ClientOrigin::Dynamic).then(Secret::generate);
        client.registration_token_sha256 = registration_token.as_ref().map(Secret::hash);
        self.store.insert_client(&client).await?;
        Ok(Issued {
            client,
            secret,
            registration_token,
        })
    }

    /// Replaces a stored client (not a static one).
    pub async fn update(&self, client: &Client) -> Result<(), ClientsError> {
        if self.statics.contains_key(&client.client_id) {
            return Err(ClientsError::Static(client.client_id.clone()));
        }
        self.forget(&client.client_id);
        if self.store.update_client(client).await? {
            self.forget(&client.client_id);
            Ok(())
        } else {
            Err(ClientsError::NotFound)
        }
    }

    /// Deletes a stored client (not a static one).
    pub async fn delete(&self, id: &str) -> Result<(), ClientsError> {
        let key = ClientId(id.to_owned());
        if self.statics.contains_key(&key) {
            return Err(ClientsError::Static(key));
        }
        self.forget(&key);
        if self.store.delete_client(&key).await? {
            self.forget(&key);
            Ok(())
        } else {
            Err(ClientsError::NotFound)
        }
    }
}
