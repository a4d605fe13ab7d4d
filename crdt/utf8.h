// UTF-8 validation. Names and strings reach clients as protobuf `string` fields, which must hold
// valid UTF-8 (a client's parser refuses the whole message otherwise), so both the API's input
// validation and the decoding of replicated state check them with this.
#ifndef MERGEDB_CRDT_UTF8_H_
#define MERGEDB_CRDT_UTF8_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace mergedb::crdt {

// The byte offset of the first invalid UTF-8 sequence of `s` (overlong forms, surrogates and
// code points past U+10FFFF included), or absl::string_view::npos when `s` is valid.
size_t InvalidUtf8At(absl::string_view s);

}  // namespace mergedb::crdt

#endif  // MERGEDB_CRDT_UTF8_H_
