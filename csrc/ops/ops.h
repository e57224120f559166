// The torch-facing ops of the extension: tensor checks and dispatch only; registered in torch_bindings.cpp.
#pragma once
#include <string>

#include <ATen/core/Tensor.h>

namespace neva {

void probe_arch(at::Tensor& out);
std::string build_info();

}  // namespace neva
