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
