// FASTQ_CHECK(cond, parts...) throws fastq::Error with the parts streamed into the message;
// bindings.cpp turns fastq::Error into a Python RuntimeError. Python validates inputs before any
// native call, so these checks are the last line of defence, never the user-facing one.
// Never throw from inside an OpenMP parallel region (it would terminate the process).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace fastq {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A buffer's contents are invalid (e.g. an index rewritten in place after validation): Python
// ValueError.
struct BufferError : Error {
  using Error::Error;
};

namespace detail {
template <typename... Parts>
[[noreturn]] void fail(const char* file, int line, const char* cond, const Parts&... parts) {
  std::ostringstream os;
  os << "fastq native check failed: " << cond << " (" << file << ":" << line << ")";
  if constexpr (sizeof...(Parts) > 0) {
    os << ": ";
    (os << ... << parts);
  }
  throw Error(os.str());
}
}  // namespace detail

}  // namespace fastq

#define FASTQ_CHECK(cond, ...)                                                     \
  do {                                                                             \
    if (!(cond)) ::fastq::detail::fail(__FILE__, __LINE__, #cond, ##__VA_ARGS__); \
  } while (0)
