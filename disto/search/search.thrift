// The search service of a distributed disto index, for clients in any language with a Thrift library.
// Transport: framed (4-byte big-endian length, then the message); protocol: binary (strict). Vectors travel
// as binary: little-endian float32, row-major; labels as little-endian int64, row-major.
// Every call carries the service token; serve on 127.0.0.1 (the default) or with TLS.

namespace py disto_search
namespace cpp disto.search
namespace java disto.search

exception SearchError {
  1: required string message
  2: optional bool lost_shard     // a shard did not answer (retry later, or ask for allow_partial)
}

struct IndexInfo {
  1: required i32 d
  2: required i64 ntotal
  3: required i32 nlist
  4: required i32 shards
  5: required i32 replicas
  6: required i32 max_k
  7: required i32 max_batch       // queries per call
}

struct SearchResult {
  1: required i32 n
  2: required i32 k
  3: required binary distances    // n * k float32
  4: required binary labels       // n * k int64, -1 where fewer than k were found
  5: required bool partial        // some shards did not answer (only with allow_partial)
  6: optional list<i32> missing_shards
}

service Search {
  IndexInfo info(1: string token) throws (1: SearchError err)
  // queries: n * d float32 with n = len(queries) / (4 * d)
  SearchResult search(1: string token, 2: binary queries, 3: i32 k, 4: i32 nprobe, 5: bool allow_partial)
      throws (1: SearchError err)
}

// ---------------------------------------------------------------------------------------------------------------
// Internal: the same-host fast path between a router and its shard processes (disto/search/link.py), over a
// Unix socket in a private directory, framed like the service (4-byte big-endian length). The batch and the
// results live in a shared-memory segment of the router; these messages only say where. Not for clients.

struct ShardSearch {
  1: required i64 seq
  2: required string segment      // the router's segment in /dev/shm (disto-<pid>-search-<n>)
  3: required i32 n               // queries
  4: required i32 d
  5: required i32 k
  6: required i32 nprobe
  7: required i64 queries         // byte offsets into the segment: n*d float32
  8: required i64 assign          // n*nprobe int64 (inverted-list ids, -1 for none)
  9: required i64 coarse          // n*nprobe float32 (coarse distances)
  10: required i64 distances      // n*k float32, written by the shard
  11: required i64 labels         // n*k int64, written by the shard
}

struct ShardSearchDone {
  1: required i64 seq
  2: required double started      // wall clock when Faiss started and ended (the router splits its wait)
  3: required double ended
  4: optional string error        // the search failed; nothing was written
}
