// The one registry of the extension's ops: torch.ops.neva_cuda.*, a schema and a line of comment each.
// (The namespace "neva" belongs to the public, backend-dispatching custom ops defined in Python.)
#include <Python.h>
#include <torch/library.h>

#include "ops/ops.h"

TORCH_LIBRARY(neva_cuda, m) {
  // Writes (__CUDA_ARCH__ of the cubin that ran, 1 if arch-specific like sm_90a) into out[0:2].
  m.def("probe_arch(Tensor(a!) out) -> ()");
  m.impl("probe_arch", c10::DeviceType::CUDA, &neva::probe_arch);

  // The CUDA runtime and the GPU architectures the extension was compiled for.
  m.def("build_info() -> str", &neva::build_info);
}

// Importing neva_kernels._C loads this library, which runs the registration above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "neva CUDA kernels (see torch.ops.neva_cuda)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
