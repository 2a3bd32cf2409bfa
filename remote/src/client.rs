//! The typed client: one HTTP/2 channel to a remote, with deadlines on every
//! call so that a remote that is down or slow turns into an error quickly
//! instead of a hang.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::digest::{Digest, Hasher};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::proto::google::bytestream::{
    byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest,
};
use crate::reapi::{
    self, action_cache_client::ActionCacheClient, capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
};

/// ByteStream chunk size: well under every server's message limit.
pub const CHUNK: usize = 1 << 20;
/// What a batch call may carry when the server does not say (REAPI's
/// conservative default is 4 MiB per message; leave room for framing).
const DEFAULT_BATCH: u64 = 4 * 1024 * 1024 - 64 * 1024;
/// Largest message we accept from a server.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Deadlines.
#[derive(Clone, Debug)]
pub struct Options {
    /// To establish the connection.
    pub connect_timeout: Duration,
    /// For one unary call, and for the gap between two messages of a stream
    /// (a big download may take long as a whole, but must keep moving).
    pub rpc_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(30),
        }
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The channel type every generated client is built on.
pub type AuthChannel = InterceptedService<Channel, Auth>;

/// A connected remote.
#[derive(Clone)]
pub struct Remote {
    endpoint: Endpoint,
    channel: AuthChannel,
    options: Options,
    max_batch: u64,
    /// The server's capabilities, as read at connect time.
    capabilities: reapi::ServerCapabilities,
}

impl Remote {
    /// Connects and reads the server's capabilities (which also proves the
    /// remote answers). Needs a tokio runtime.
    pub async fn connect(endpoint: Endpoint, options: Options) -> Result<Remote> {
        let connect_err = |why: String| Error::Connect {
            endpoint: endpoint.to_string(),
            why,
        };
        let auth = match endpoint.token() {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        connect_err("the token has characters a header cannot carry".into())
                    })?,
            ),
            None => None,
        };
        let mut ep = Channel::from_shared(endpoint.origin())
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        if endpoint.tls {
            let mut tls = ClientTlsConfig::new()
                .with_webpki_roots()
                .domain_name(endpoint.host.clone());
            if let Some(ca) = endpoint.ca() {
                tls = tls.ca_certificate(Certificate::from_pem(ca.pem()));
            }
            if let Some(id) = endpoint.identity() {
                tls = tls.identity(Identity::from_pem(id.cert_pem(), id.key_pem()));
            }
            ep = ep.tls_config(tls).map_err(|e| connect_err(e.to_string()))?;
        }
        let channel = match tokio::time::timeout(options.connect_timeout, ep.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let mut why = source_chain(&e);
                why.push_str(&tls_hint(&endpoint, &why, options.connect_timeout).await);
                return Err(connect_err(why));
            }
            Err(_) => {
                return Err(Error::Timeout {
                    endpoint: endpoint.to_string(),
                    op: "connect",
                    secs: options.connect_timeout.as_secs(),
                })
            }
        };
        let channel = InterceptedService::new(channel, Auth(auth));
        let mut remote = Remote {
            endpoint,
            channel,
            options,
            max_batch: DEFAULT_BATCH,
            capabilities: reapi::ServerCapabilities::default(),
        };
        let caps = match remote.get_capabilities().await {
            Ok(c) => c,
            // The first call is where a server that wants a client
            // certificate (or refuses ours) says so.
            Err(Error::Rpc {
                endpoint: e,
                op,
                code,
                mut message,
            }) => {
                message.push_str(
                    &tls_hint(&remote.endpoint, &message, remote.options.connect_timeout).await,
                );
                return Err(Error::Rpc {
                    endpoint: e,
                    op,
                    code,
                    message,
                });
            }
            Err(e) => return Err(e),
        };
        if let Some(cc) = &caps.cache_capabilities {
            let sha256 = reapi::digest_function::Value::Sha256 as i32;
            if !cc.digest_functions.is_empty() && !cc.digest_functions.contains(&sha256) {
                return Err(Error::Protocol {
                    what: "capabilities",
                    why: "the remote does not offer sha256 digests".into(),
                });
            }
            if cc.max_batch_total_size_bytes > 0 {
                remote.max_batch = (cc.max_batch_total_size_bytes as u64)
                    .saturating_sub(64 * 1024)
                    .max(64 * 1024);
            }
        }
        remote.capabilities = caps;
        Ok(remote)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The channel with authentication, for clients of other services
    /// (Execution, Operations, Bots) built on the same connection.
    pub fn channel(&self) -> AuthChannel {
        self.channel.clone()
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The capabilities read at connect time.
    pub fn capabilities(&self) -> &reapi::ServerCapabilities {
        &self.capabilities
    }

    /// Whether the server says clients may write the ActionCache.
    pub fn action_cache_writable(&self) -> bool {
        self.capabilities
            .cache_capabilities
            .as_ref()
            .and_then(|c| c.action_cache_update_capabilities.as_ref())
            .is_some_and(|u| u.update_enabled)
    }

    fn instance(&self) -> String {
        self.endpoint.instance.clone()
    }

    /// Runs one call under the RPC deadline and turns its status into an [`Error`].
    pub async fn call<T, F>(&self, op: &'static str, fut: F) -> Result<T>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.options.rpc_timeout, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.status(op, s)),
            Err(_) => Err(self.timeout(op)),
        }
    }

    pub fn status(&self, op: &'static str, s: tonic::Status) -> Error {
        Error::Rpc {
            endpoint: self.endpoint.to_string(),
            op,
            code: s.code(),
            message: status_message(&s),
        }
    }

    pub fn timeout(&self, op: &'static str) -> Error {
        Error::Timeout {
            endpoint: self.endpoint.to_string(),
            op,
            secs: self.options.rpc_timeout.as_secs(),
        }
    }

    fn cas(&self) -> ContentAddressableStorageClient<AuthChannel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn bytestream(&self) -> ByteStreamClient<AuthChannel> {
        ByteStreamClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn action_cache(&self) -> ActionCacheClient<AuthChannel> {
        ActionCacheClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// Capabilities.GetCapabilities.
    pub async fn get_capabilities(&self) -> Result<reapi::ServerCapabilities> {
        let mut c = CapabilitiesClient::new(self.channel.clone());
        let req = reapi::GetCapabilitiesRequest {
            instance_name: self.instance(),
        };
        self.call("GetCapabilities", c.get_capabilities(req)).await
    }

    /// CAS.FindMissingBlobs: which of `digests` the remote lacks.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut missing = Vec::new();
        // Keep each request modest in size (a digest is ~80 bytes on the wire).
        for chunk in digests.chunks(10_000) {
            let req = reapi::FindMissingBlobsRequest {
                instance_name: self.instance(),
                blob_digests: chunk.iter().map(Digest::to_proto).collect(),
                digest_function: reapi::digest_function::Value::Sha256 as i32,
            };
            let mut cas = self.cas();
            let resp = self
                .call("FindMissingBlobs", cas.find_missing_blobs(req))
                .await?;
            for d in &resp.missing_blob_digests {
                missing.push(Digest::from_proto(d)?);
            }
        }
        Ok(missing)
    }

    /// Whether a blob this big goes through the batch calls.
    pub fn fits_batch(&self, size: u64) -> bool {
        size <= self.max_batch
    }

    /// CAS.BatchUpdateBlobs for small blobs (each must fit a batch; they are
    /// grouped into as few calls as the server's limit allows).
    pub async fn batch_update(&self, blobs: &[(Digest, &[u8])]) -> Result<()> {
        let mut group: Vec<reapi::batch_update_blobs_request::Request> = Vec::new();
        let mut group_size = 0u64;
        for (digest, data) in blobs {
            if group_size + digest.size > self.max_batch && !group.is_empty() {
                self.batch_update_call(std::mem::take(&mut group)).await?;
                group_size = 0;
            }
            group_size += digest.size;
            group.push(reapi::batch_update_blobs_request::Request {
                digest: Some(digest.to_proto()),
                data: prost::bytes::Bytes::copy_from_slice(data),
                compressor: 0,
            });
        }
        if !group.is_empty() {
            self.batch_update_call(group).await?;
        }
        Ok(())
    }

    async fn batch_update_call(
        &self,
        requests: Vec<reapi::batch_update_blobs_request::Request>,
    ) -> Result<()> {
        let req = reapi::BatchUpdateBlobsRequest {
            instance_name: self.instance(),
            requests,
            digest_function: reapi::digest_function::Value::Sha256 as i32,
        };
        let mut cas = self.cas();
        let resp = self
            .call("BatchUpdateBlobs", cas.batch_update_blobs(req))
            .await?;
        for r in resp.responses {
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                let d = r.digest.map(|d| format!("{}/{}", d.hash, d.size_bytes));
                return Err(Error::Rpc {
                    endpoint: self.endpoint.to_string(),
                    op: "BatchUpdateBlobs",
                    code: tonic::Code::from_i32(s.code),
                    message: format!("blob {}: {}", d.unwrap_or_default(), s.message),
                });
            }
        }
        Ok(())
    }

    /// CAS.BatchReadBlobs for small blobs; every blob is checked against its
    /// digest. A blob the remote lacks is [`Error::Missing`].
    pub async fn batch_read(&self, digests: &[Digest]) -> Result<Vec<(Digest, Vec<u8>)>> {
        let mut out = Vec::with_capacity(digests.len());
        let mut start = 0;
        while start < digests.len() {
            let mut end = start;
            let mut size = 0u64;
            while end < digests.len()
                && (end == start || size + digests[end].size <= self.max_batch)
            {
                size += digests[end].size;
                end += 1;
            }
            let req = reapi::BatchReadBlobsRequest {
                instance_name: self.instance(),
                digests: digests[start..end].iter().map(Digest::to_proto).collect(),
                acceptable_compressors: Vec::new(),
                digest_function: reapi::digest_function::Value::Sha256 as i32,
            };
            let mut cas = self.cas();
            let resp = self
                .call("BatchReadBlobs", cas.batch_read_blobs(req))
                .await?;
            for want in &digests[start..end] {
                let got = resp
                    .responses
                    .iter()
                    .find(|r| r.digest.as_ref().is_some_and(|d| d.hash == want.hash));
                let Some(r) = got else {
                    return Err(Error::Protocol {
                        what: "BatchReadBlobs response",
                        why: format!("no entry for {want}"),
                    });
                };
                match &r.status {
                    Some(s) if s.code == tonic::Code::NotFound as i32 => {
                        return Err(Error::Missing {
                            digest: want.to_string(),
                        })
                    }
                    Some(s) if s.code != 0 => {
                        return Err(Error::Rpc {
                            endpoint: self.endpoint.to_string(),
                            op: "BatchReadBlobs",
                            code: tonic::Code::from_i32(s.code),
                            message: format!("blob {want}: {}", s.message),
                        })
                    }
                    _ => {}
                }
                want.verify(&r.data)?;
                out.push((want.clone(), r.data.to_vec()));
            }
            start = end;
        }
        Ok(out)
    }

    /// One blob into memory (batch or ByteStream by size), verified.
    /// For blobs that may be big, use [`Remote::read_to`].
    pub async fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        if self.fits_batch(digest.size) {
            let mut v = self.batch_read(std::slice::from_ref(digest)).await?;
            return Ok(v.pop().map(|(_, b)| b).unwrap_or_default());
        }
        let mut buf = Vec::with_capacity(usize::try_from(digest.size).unwrap_or(0));
        self.read_to(digest, &mut buf).await?;
        Ok(buf)
    }

    /// Starts a ByteStream.Read of one blob: [`BlobReader::next`] hands
    /// out its chunks, checked against `digest` at the end.
    pub async fn open_read(&self, digest: &Digest) -> Result<BlobReader> {
        let missing = || Error::Missing {
            digest: digest.to_string(),
        };
        let stream = if digest.size == 0 {
            None
        } else {
            let req = ReadRequest {
                resource_name: self.endpoint.read_resource(&digest.hash, digest.size),
                read_offset: 0,
                read_limit: 0,
            };
            let mut bs = self.bytestream();
            match self.call("ByteStream.Read", bs.read(req)).await {
                Err(Error::Rpc {
                    code: tonic::Code::NotFound,
                    ..
                }) => return Err(missing()),
                r => Some(r?),
            }
        };
        Ok(BlobReader {
            remote: self.clone(),
            digest: digest.clone(),
            stream,
            hasher: Hasher::default(),
            got: 0,
            done: false,
        })
    }

    /// ByteStream.Read of one blob, each chunk handed to `sink` as it
    /// arrives (memory: one chunk). Returns only once the whole blob
    /// arrived and matched `digest`; on any error what `sink` saw must be
    /// discarded.
    pub async fn read_with<F>(&self, digest: &Digest, mut sink: F) -> Result<()>
    where
        F: FnMut(&[u8]) -> std::io::Result<()>,
    {
        let mut r = self.open_read(digest).await?;
        while let Some(chunk) = r.next().await? {
            sink(&chunk).map_err(|e| Error::Io {
                path: "(download target)".into(),
                source: e,
            })?;
        }
        Ok(())
    }

    /// [`Remote::read_with`] into an async writer.
    pub async fn read_to<W: AsyncWrite + Unpin>(&self, digest: &Digest, out: &mut W) -> Result<()> {
        let io = |e| Error::Io {
            path: "(download target)".into(),
            source: e,
        };
        let mut r = self.open_read(digest).await?;
        while let Some(chunk) = r.next().await? {
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)
    }

    /// Downloads a blob to `staging` (created or truncated), verified; the
    /// caller renames it into place. On error the file is removed.
    pub async fn download_file(&self, digest: &Digest, staging: &Path) -> Result<()> {
        let io = |e| Error::Io {
            path: staging.to_path_buf(),
            source: e,
        };
        let file = tokio::fs::File::create(staging).await.map_err(io)?;
        let mut w = tokio::io::BufWriter::with_capacity(CHUNK, file);
        let r = self.read_to(digest, &mut w).await;
        let r = match r {
            Ok(()) => {
                let file = w.into_inner();
                file.sync_all().await.map_err(io)
            }
            Err(e) => Err(e),
        };
        if r.is_err() {
            let _ = tokio::fs::remove_file(staging).await;
        }
        r
    }

    /// Uploads one in-memory blob (batch or ByteStream by size).
    pub async fn upload_blob(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        if self.fits_batch(digest.size) {
            return self.batch_update(&[(digest.clone(), data)]).await;
        }
        let data = bytes_chunks(data);
        self.write_stream(digest, futures_util::stream::iter(data))
            .await
    }

    /// ByteStream.Write of a file, read in chunks (never held whole). The
    /// file must have `digest` (the caller knows it from the store).
    pub async fn upload_file(&self, digest: &Digest, path: &Path) -> Result<()> {
        let io = |e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        };
        if self.fits_batch(digest.size) {
            let data = tokio::fs::read(path).await.map_err(io)?;
            digest.verify(&data).map_err(|_| Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!("does not have digest {digest}")),
            })?;
            return self.batch_update(&[(digest.clone(), &data)]).await;
        }
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let failure: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
        let fail = failure.clone();
        let chunks = futures_util::stream::unfold(Some(file), move |state| {
            let fail = fail.clone();
            async move {
                let mut file = state?;
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0;
                while n < CHUNK {
                    match file.read(&mut buf[n..]).await {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => {
                            if let Ok(mut f) = fail.lock() {
                                *f = Some(e);
                            }
                            return None;
                        }
                    }
                }
                if n == 0 {
                    return None;
                }
                buf.truncate(n);
                Some((buf, Some(file)))
            }
        });
        let r = self.write_stream(digest, chunks).await;
        if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
            return Err(io(e));
        }
        r
    }

    async fn write_stream<S>(&self, digest: &Digest, chunks: S) -> Result<()>
    where
        S: futures_util::Stream<Item = Vec<u8>> + Send + 'static,
    {
        let uuid = uuid::Uuid::new_v4().to_string();
        let resource = self
            .endpoint
            .write_resource(&uuid, &digest.hash, digest.size);
        let size = digest.size;
        let mut offset = 0i64;
        let mut first = true;
        let reqs = chunks.map(move |data| {
            let r = WriteRequest {
                resource_name: if first {
                    resource.clone()
                } else {
                    String::new()
                },
                write_offset: offset,
                finish_write: offset as u64 + data.len() as u64 == size,
                data: data.into(),
            };
            first = false;
            offset += r.data.len() as i64;
            r
        });
        let mut bs = self.bytestream();
        // The whole upload may take long; it is bounded by the stall timeout
        // of the transport and a generous overall deadline per megabyte.
        let secs = self.options.rpc_timeout.as_secs() + digest.size / (1 << 20);
        let fut = bs.write(reqs);
        let resp = match tokio::time::timeout(Duration::from_secs(secs), fut).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => return Err(self.status("ByteStream.Write", s)),
            Err(_) => return Err(self.timeout("ByteStream.Write")),
        };
        if resp.committed_size != digest.size as i64 && resp.committed_size != -1 {
            return Err(Error::Protocol {
                what: "ByteStream.Write response",
                why: format!("committed {} bytes of {digest}", resp.committed_size),
            });
        }
        Ok(())
    }

    /// ActionCache.GetActionResult; `None` when the remote has no result.
    pub async fn get_action_result(&self, action: &Digest) -> Result<Option<reapi::ActionResult>> {
        let req = reapi::GetActionResultRequest {
            instance_name: self.instance(),
            action_digest: Some(action.to_proto()),
            inline_stdout: false,
            inline_stderr: false,
            inline_output_files: Vec::new(),
            digest_function: reapi::digest_function::Value::Sha256 as i32,
        };
        let mut ac = self.action_cache();
        match self
            .call("GetActionResult", ac.get_action_result(req))
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(Error::Rpc {
                code: tonic::Code::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// ActionCache.UpdateActionResult.
    pub async fn update_action_result(
        &self,
        action: &Digest,
        result: reapi::ActionResult,
    ) -> Result<reapi::ActionResult> {
        let req = reapi::UpdateActionResultRequest {
            instance_name: self.instance(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: reapi::digest_function::Value::Sha256 as i32,
        };
        let mut ac = self.action_cache();
        self.call("UpdateActionResult", ac.update_action_result(req))
            .await
    }
}

/// A blob being read from ByteStream, chunk by chunk.
pub struct BlobReader {
    remote: Remote,
    digest: Digest,
    stream: Option<tonic::Streaming<crate::proto::google::bytestream::ReadResponse>>,
    hasher: Hasher,
    got: u64,
    done: bool,
}

impl BlobReader {
    /// The next chunk; `None` at the end, once the blob matched its digest.
    /// A wrong size or hash is [`Error::Corrupt`]; a stream that stalls for
    /// the RPC timeout is [`Error::Timeout`].
    pub async fn next(&mut self) -> Result<Option<prost::bytes::Bytes>> {
        if self.done {
            return Ok(None);
        }
        let msg = match &mut self.stream {
            None => None,
            Some(s) => {
                match tokio::time::timeout(self.remote.options.rpc_timeout, s.message()).await {
                    Err(_) => return Err(self.remote.timeout("ByteStream.Read")),
                    Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                        return Err(Error::Missing {
                            digest: self.digest.to_string(),
                        })
                    }
                    Ok(Err(s)) => return Err(self.remote.status("ByteStream.Read", s)),
                    Ok(Ok(m)) => m,
                }
            }
        };
        match msg {
            Some(m) => {
                self.got += m.data.len() as u64;
                if self.got > self.digest.size {
                    return Err(Error::Corrupt {
                        digest: self.digest.to_string(),
                        got: format!("more than {} bytes", self.digest.size),
                    });
                }
                self.hasher.update(&m.data);
                Ok(Some(m.data))
            }
            None => {
                self.done = true;
                let have = std::mem::take(&mut self.hasher).finish();
                if have != self.digest {
                    return Err(Error::Corrupt {
                        digest: self.digest.to_string(),
                        got: have.to_string(),
                    });
                }
                Ok(None)
            }
        }
    }
}

fn bytes_chunks(data: &[u8]) -> Vec<Vec<u8>> {
    data.chunks(CHUNK).map(<[u8]>::to_vec).collect()
}

/// What to add to the message `why` of a failed `grpcs://` connection or
/// first call so that it names a certificate problem and its fix. When the
/// message itself does not tell, a server that hung up right after the
/// handshake and asks for client certificates is taken to have refused
/// this client's (or its lack of one).
async fn tls_hint(endpoint: &Endpoint, why: &str, limit: Duration) -> String {
    let hint = crate::diagnose::hint(endpoint, why);
    let w = why.to_lowercase();
    // Nothing to learn from a server that could not be reached at all.
    if !hint.is_empty()
        || !endpoint.tls
        || w.contains("tcp connect error")
        || w.contains("dns error")
    {
        return hint;
    }
    if crate::diagnose::asks_for_client_cert(endpoint, limit).await {
        crate::diagnose::cert_refused(endpoint)
    } else {
        String::new()
    }
}

/// A status's message and, for one made from a transport error (a TLS
/// alert, a connection reset), that error's chain of causes: "transport
/// error" alone says too little.
fn status_message(s: &tonic::Status) -> String {
    let mut message = s.message().to_string();
    if let Some(src) = std::error::Error::source(s) {
        let chain = source_chain(src);
        if chain.starts_with(&message) {
            message = chain;
        } else if !message.contains(&chain) {
            message.push_str(": ");
            message.push_str(&chain);
        }
    }
    message
}

/// An error and its causes on one line (tonic's transport errors hide the
/// useful part, e.g. "Connection refused", in their sources).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
