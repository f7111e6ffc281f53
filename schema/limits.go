package schema

import "time"

// MaxPartitionKey is the longest partition_key the table accepts, in bytes
// (check <table>_partkey_size, migration 003; dead rows are exempt).
//
// A row that backs off enters partition_idx (partition_key, id), whose
// btree entries hold at most 2704 bytes on 8 KB pages, about 2680 bytes of
// a key that does not compress. A failed row with a longer key could not
// be updated, and the relay could not record its attempt. 1024 bytes is
// plenty for an aggregate id, and fits an entry on 4 KB pages too.
//
// The migration states the number itself, so that it reads as plain SQL;
// the schema tests check that the two agree.
const MaxPartitionKey = 1024

// MaxExpiration is the longest expiration the table accepts (check
// <table>_expiration_range, migration 005): 2^32-1 milliseconds, about 49.7
// days. RabbitMQ closes the channel over a per-message TTL it cannot hold
// (PRECONDITION_FAILED, value_too_large: seen at 100 years), which would
// send the batch's other messages again; a row that means "never" should
// leave expiration null. The migration states the number itself.
const MaxExpiration = (1<<32 - 1) * time.Millisecond
