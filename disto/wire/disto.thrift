/*
 * disto wire protocol, version 1.
 *
 * Every message on a disto connection is one frame:
 *
 *   header   16 bytes, big-endian: u32 body_len | u8 version | u8 kind | u16 flags | u64 oob_len
 *   body     body_len bytes: the struct named by `kind`, Thrift binary protocol
 *   oob      oob_len bytes: the out-of-band buffers listed in the body's `buffers`, back to back
 *
 * `kind` is a MessageKind. Before the handshake completes only HELLO, WELCOME and AUTH are accepted, bodies are
 * at most 4 KiB and oob_len must be 0: nothing that could carry a pickle is read from an unauthenticated peer.
 *
 * Payload fields named `payload` hold a pickle stream (protocol 5) that only Python peers decode; a non-Python
 * client can still read every other field (errors have their type, message and traceback as text).
 */
namespace py disto_thrift

const i16 WIRE_VERSION = 1

enum MessageKind {
  HELLO = 1,
  WELCOME = 2,
  AUTH = 3,
  CALL = 4,
  REPLY = 5,
  FAILURE = 6,
  CANCEL = 7,
  HEARTBEAT = 8,
  GOODBYE = 9,
  RELEASE = 10,
  MODULES = 11,
  STREAM_ITEM = 12,
  STREAM_END = 13,
  STREAM_CREDIT = 14,
}

/* Where an out-of-band buffer lives. INLINE buffers follow the body in the same frame. */
enum BufferKind {
  INLINE = 0,
  SHM = 1,       // same host, value: a block of the sender's segment pool, `segment` at `offset`; the
                 // receiver maps it and sends RELEASE when the value built on it is gone
  SHM_SHARED = 2, // same host, by reference: memory both sides share (a tensor in shared memory); `segment`
                 // names a file to map ("/dev/shm/..." name or "/proc/PID/fd/N"), no RELEASE
  CUDA_IPC = 3,  // same host: CUDA IPC handle and event in `handle` (torch's reduction, pickled)
}

struct BufferDesc {
  1: required i64 size,
  2: optional BufferKind kind = BufferKind.INLINE,
  3: optional string segment,
  4: optional i64 offset,
  5: optional binary handle,
}

/* Handshake: mutual HMAC-SHA256 challenge-response on the cluster token.
 *   dialer   -> HELLO    {nonce_d, identity}
 *   listener -> WELCOME  {nonce_l, identity, proof_l = HMAC(token, "disto1/listener" | HELLO body | nonce_l | listener identity)}
 *   dialer   -> AUTH     {proof_d = HMAC(token, "disto1/dialer" | HELLO body | WELCOME body without proof)}
 * Each side is ready once it has checked the other's proof; a wrong proof closes the connection. */
struct Hello {
  1: required i16 version,
  2: required binary nonce,
  3: required string node_id,
  4: optional string listen,     // "host:port" the dialer accepts connections on, if any
  5: optional string host_id,    // boot id + pid namespace: same host_id means same host
  6: optional i32 pid,
}

struct Welcome {
  1: required i16 version,
  2: required binary nonce,
  3: required string node_id,
  4: optional string listen,
  5: optional string host_id,
  6: optional i32 pid,
  7: optional binary proof,
}

struct Auth {
  1: required binary proof,
}

/* A method call. `call_id` is unique per connection and direction; 0 means one-way (no reply). */
struct Call {
  1: required i64 call_id,
  2: required i64 actor_id,
  3: required string method,
  4: optional binary payload,            // pickled (args, kwargs); empty when payload_oob
  5: optional list<BufferDesc> buffers,  // pickle-5 out-of-band buffers
  6: optional bool payload_oob = false,  // the pickle stream itself is buffers[0]
  7: optional string node_id,            // the node the caller believes hosts the actor ("" = any)
  8: optional string traceparent,        // W3C trace context of the caller's span (when it traces)
}

struct Reply {
  1: required i64 call_id,
  2: optional binary payload,
  3: optional list<BufferDesc> buffers,
  4: optional bool payload_oob = false,
}

enum FailureKind {
  REMOTE = 1,           // the method raised
  ACTOR_NOT_FOUND = 2,
  ACTOR_DEAD = 3,
  CANCELLED = 4,
  SERIALIZATION = 5,    // arguments or result could not be (un)pickled
  NODE_LOST = 6,
}

struct Failure {
  1: required i64 call_id,
  2: required FailureKind kind,
  3: optional string type_name,   // "module.QualName" of the remote exception
  4: optional string message,
  5: optional string traceback,
  6: optional string actor,
  7: optional string method,
  8: optional string node,
  9: optional binary error,        // the pickled exception object, when it pickles
}

struct Cancel {
  1: required i64 call_id,
}

struct Heartbeat {
  1: required i64 seq,
  2: optional double sent_at,
  3: optional bool is_reply = false,
}

struct Goodbye {
  1: optional string reason,
}

/* The receiver no longer uses these SHM blocks (their values were dropped): the sender may reuse them. */
struct Release {
  1: required list<BufferDesc> buffers,
}

/* Python source of the sender's own modules (not installed on the receiver), sent once per connection ahead of
 * the first message whose payload refers to them. `lines_only`: a script's source, kept for tracebacks only. */
struct ModuleSource {
  1: required string name,
  2: required string source,
  3: optional string filename,
  4: optional bool is_package = false,
  5: optional bool lines_only = false,
}

struct Modules {
  1: required list<ModuleSource> modules,
}

/* Streams: a call to a generator method is answered with items instead of one REPLY. The callee sends at most
 * `credit` items ahead of what the caller has consumed (the caller grants more with STREAM_CREDIT), then
 * STREAM_END, or a FAILURE with the call's id where the generator raised. The caller stops it with CANCEL.
 * STREAM_ITEM has the field layout of Reply (the same codec frames both). */
struct StreamItem {
  1: required i64 call_id,
  2: optional binary payload,
  3: optional list<BufferDesc> buffers,
  4: optional bool payload_oob = false,
}

struct StreamEnd {
  1: required i64 call_id,
  2: optional i64 items,
}

struct StreamCredit {
  1: required i64 call_id,
  2: required i32 credit,
}
