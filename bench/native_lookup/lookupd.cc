// The native ceiling of issue 2's Lookup benchmark (bench/native_lookup.py): a C++ gRPC server
// (Debian's libgrpc++) answering memsvc.v1.KnowledgeService/LookupStream from one bank file, the
// way `memsvc serve` answers a full-layer lookup that names a reply buffer: rows gathered in
// request order straight into the client's shared-memory buffer (memsvc/shared_buffers.py), or
// into the reply when the request names none. No versions, edits or vocabularies: it measures
// what the Python client and the gRPC stack cost when the server costs (almost) nothing.
//
// Usage: lookupd PORT BANK.npy   (BANK: float16 [vocab, layers, dim], .npy format 1.0)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <map>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "memsvc/v1/knowledge.grpc.pb.h"

using memsvc::v1::KnowledgeService;
using memsvc::v1::LookupRequest;
using memsvc::v1::LookupResponse;

constexpr size_t kHeaderBytes = 64, kKeyBytes = 16;  // as memsvc/shared_buffers.py

struct Bank {
  const uint8_t* rows = nullptr;
  int64_t vocab = 0, layers = 0, dim = 0;
  size_t row_bytes = 0;
};

// "'shape': (V, L, d)" out of the .npy header; rows start after it.
static Bank open_bank(const char* path) {
  int fd = open(path, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) throw std::runtime_error(std::string("cannot open ") + path);
  auto* file = static_cast<const uint8_t*>(mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, fd, 0));
  close(fd);
  uint16_t header_len;
  std::memcpy(&header_len, file + 8, 2);
  std::string header(reinterpret_cast<const char*>(file + 10), header_len);
  if (header.find("'<f2'") == std::string::npos) throw std::runtime_error("bank: expected float16 rows");
  Bank bank;
  bank.rows = file + 10 + header_len;
  if (std::sscanf(header.c_str() + header.find("'shape': (") + 10, "%ld, %ld, %ld", &bank.vocab, &bank.layers, &bank.dim) != 3)
    throw std::runtime_error("bank: expected a 3-d shape");
  bank.row_bytes = bank.layers * bank.dim * 2;
  return bank;
}

class Lookups final : public KnowledgeService::Service {
 public:
  explicit Lookups(Bank bank) : bank_(bank) {}

  grpc::Status LookupStream(grpc::ServerContext*, grpc::ServerReaderWriter<LookupResponse, LookupRequest>* stream) override {
    LookupRequest request;
    LookupResponse reply;
    while (stream->Read(&request)) {
      const int64_t n = request.token_ids_size();
      for (int64_t id : request.token_ids())
        if (id < 0 || id >= bank_.vocab) return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "token_ids: id out of range");
      reply.Clear();
      reply.set_version(1);
      auto* rows = reply.mutable_rows();
      rows->set_dtype("float16");
      for (int64_t size : {n, bank_.layers, bank_.dim}) rows->add_shape(size);
      uint8_t* out;
      if (request.has_reply_buffer()) {
        out = buffer(request.reply_buffer().name(), request.reply_buffer().key(), n * bank_.row_bytes);
        if (out == nullptr) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "reply_buffer: unusable");
        reply.set_rows_in_buffer(true);
        reply.set_rows_in_request_order(true);
        *reply.mutable_unique_token_ids() = request.token_ids();
      } else {  // rows in the reply, each position its own row (inverse = identity)
        rows->mutable_data()->resize(n * bank_.row_bytes);
        out = reinterpret_cast<uint8_t*>(rows->mutable_data()->data());
        *reply.mutable_unique_token_ids() = request.token_ids();
        for (int64_t i = 0; i < n; i++) reply.add_inverse(i);
      }
      for (int64_t i = 0; i < n; i++)
        std::memcpy(out + i * bank_.row_bytes, bank_.rows + request.token_ids(i) * bank_.row_bytes, bank_.row_bytes);
      stream->Write(reply);
    }
    return grpc::Status::OK;
  }

 private:
  // The client's buffer, mapped once: nullptr unless it starts with the key and has room.
  uint8_t* buffer(const std::string& name, const std::string& key, size_t bytes) {
    std::lock_guard<std::mutex> hold(lock_);
    auto found = maps_.find(name);
    if (found == maps_.end()) {
      if (name.find('/') != std::string::npos || name.rfind("memsvc-", 0) != 0) return nullptr;
      int fd = open(("/dev/shm/" + name).c_str(), O_RDWR);
      struct stat st;
      if (fd < 0 || fstat(fd, &st) != 0) return nullptr;
      void* map = mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      close(fd);
      if (map == MAP_FAILED) return nullptr;
      found = maps_.emplace(name, std::make_pair(static_cast<uint8_t*>(map), static_cast<size_t>(st.st_size))).first;
    }
    auto [map, size] = found->second;
    if (key.size() != kKeyBytes || std::memcmp(map, key.data(), kKeyBytes) != 0 || kHeaderBytes + bytes > size) return nullptr;
    return map + kHeaderBytes;
  }

  Bank bank_;
  std::mutex lock_;
  std::map<std::string, std::pair<uint8_t*, size_t>> maps_;
};

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: lookupd PORT BANK.npy" << std::endl;
    return 2;
  }
  Lookups service(open_bank(argv[2]));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(std::string("127.0.0.1:") + argv[1], grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  std::cout << "serving" << std::endl;
  server->Wait();
}
