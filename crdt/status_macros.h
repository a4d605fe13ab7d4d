// Status propagation macros. Abseil 20220623 ships none, so the project defines them once, here.
#ifndef MERGEDB_CRDT_STATUS_MACROS_H_
#define MERGEDB_CRDT_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MERGEDB_STATUS_CONCAT_INNER_(a, b) a##b
#define MERGEDB_STATUS_CONCAT_(a, b) MERGEDB_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function when not OK.
#define MERGEDB_RETURN_IF_ERROR(expr)                 \
  do {                                                \
    ::absl::Status mergedb_status_ = (expr);          \
    if (!mergedb_status_.ok()) return mergedb_status_; \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, otherwise moves the
// value into `lhs` (which may be a declaration such as `auto x`).
#define MERGEDB_ASSIGN_OR_RETURN(lhs, rexpr) \
  MERGEDB_ASSIGN_OR_RETURN_IMPL_(MERGEDB_STATUS_CONCAT_(mergedb_statusor_, __LINE__), lhs, rexpr)

#define MERGEDB_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();   \
  lhs = std::move(statusor).value()

#endif  // MERGEDB_CRDT_STATUS_MACROS_H_
