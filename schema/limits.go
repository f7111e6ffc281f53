package schema

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
