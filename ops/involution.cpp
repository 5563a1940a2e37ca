// The involution_mm operator library: schemas, argument checks, output allocation, autocast,
// autograd and the Python module.
// Kernels are registered per device in cpu/involution_cpu.cpp and cuda/involution_cuda.cpp;
// the fake (meta) kernels are registered from Python (involution_mm/ops).
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "common/involution_op.h"

namespace involution_mm {
namespace {

void check_hyperparameters(int64_t kernel_size, int64_t stride, int64_t dilation,
                           int64_t padding) {
  TORCH_CHECK_VALUE(kernel_size > 0, "involution: kernel_size must be positive, got ", kernel_size);
  TORCH_CHECK_VALUE(stride > 0, "involution: stride must be positive, got ", stride);
  TORCH_CHECK_VALUE(dilation > 0, "involution: dilation must be positive, got ", dilation);
  TORCH_CHECK_VALUE(padding >= 0, "involution: padding must be non-negative, got ", padding);
}

void check_tensor(const at::Tensor& t, const char* name, int64_t dim, const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.dim() == dim, "involution: ", name, " must be ", dim, "-d, got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                       t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
                   "involution: ", name, " must be float32, float64, float16 or bfloat16, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.scalar_type() == like.scalar_type(), "involution: ", name, " has dtype ",
                   t.scalar_type(), " but the other tensor has ", like.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), "involution: ", name, " is on ", t.device(),
                    " but the other tensor is on ", like.device());
}

// Completes `shape` (B, C, H, W and the hyper-parameters set) with G, Ho and Wo.
void check_sizes(InvolutionShape& shape, int64_t groups) {
  TORCH_CHECK_VALUE(shape.C > 0 && shape.H > 0 && shape.W > 0,
                    "involution: input must have non-zero channels, height and width, got (C, H, W) = (",
                    shape.C, ", ", shape.H, ", ", shape.W, ")");
  shape.Ho = involution_out_size(shape.H, shape.K, shape.stride, shape.dilation, shape.padding);
  shape.Wo = involution_out_size(shape.W, shape.K, shape.stride, shape.dilation, shape.padding);
  TORCH_CHECK_VALUE(shape.Ho > 0 && shape.Wo > 0, "involution: input of size ", shape.H, "x",
                    shape.W, " is too small for kernel_size=", shape.K, ", dilation=",
                    shape.dilation, ", padding=", shape.padding);
  shape.G = groups;
  TORCH_CHECK_VALUE(shape.G > 0 && shape.C % shape.G == 0, "involution: ", shape.C,
                    " channels cannot be split into ", shape.G,
                    " groups; C must be divisible by the number of groups");
}

// check_sizes with G = weight.shape[1], and the weight must be (B, G, K, K, Ho, Wo).
void check_weight(InvolutionShape& shape, const at::Tensor& weight) {
  check_sizes(shape, weight.size(1));
  const std::vector<int64_t> expected{shape.B, shape.G, shape.K, shape.K, shape.Ho, shape.Wo};
  TORCH_CHECK_VALUE(weight.sizes() == c10::IntArrayRef(expected), "involution: weight must have shape ",
                    "(B, G, K, K, Ho, Wo) = ", c10::IntArrayRef(expected), " for input (B, C, H, W) = (",
                    shape.B, ", ", shape.C, ", ", shape.H, ", ", shape.W, "), kernel_size=",
                    shape.K, ", stride=", shape.stride, ", dilation=", shape.dilation,
                    ", padding=", shape.padding, "; got ", weight.sizes());
}

InvolutionShape make_shape(c10::IntArrayRef bchw, int64_t kernel_size, int64_t stride,
                           int64_t dilation, int64_t padding) {
  InvolutionShape s{};
  s.B = bchw[0];
  s.C = bchw[1];
  s.H = bchw[2];
  s.W = bchw[3];
  s.K = kernel_size;
  s.stride = stride;
  s.dilation = dilation;
  s.padding = padding;
  return s;
}

}  // namespace

InvolutionShape check_forward_args(const at::Tensor& input, const at::Tensor& weight,
                                   int64_t kernel_size, int64_t stride, int64_t dilation,
                                   int64_t padding) {
  check_hyperparameters(kernel_size, stride, dilation, padding);
  check_tensor(input, "input", 4, weight);
  check_tensor(weight, "weight", 6, input);
  InvolutionShape shape = make_shape(input.sizes(), kernel_size, stride, dilation, padding);
  check_weight(shape, weight);
  return shape;
}

InvolutionShape check_grad_input_args(const at::Tensor& grad_output, const at::Tensor& weight,
                                      c10::IntArrayRef input_size, int64_t kernel_size,
                                      int64_t stride, int64_t dilation, int64_t padding) {
  check_hyperparameters(kernel_size, stride, dilation, padding);
  check_tensor(grad_output, "grad_output", 4, weight);
  check_tensor(weight, "weight", 6, grad_output);
  TORCH_CHECK_VALUE(input_size.size() == 2, "involution: input_size must be (H, W), got ",
                    input_size);
  InvolutionShape shape =
      make_shape({grad_output.size(0), grad_output.size(1), input_size[0], input_size[1]},
                 kernel_size, stride, dilation, padding);
  check_weight(shape, weight);
  TORCH_CHECK_VALUE(grad_output.size(2) == shape.Ho && grad_output.size(3) == shape.Wo,
                    "involution: grad_output must be ", shape.Ho, "x", shape.Wo, ", got ",
                    grad_output.sizes());
  return shape;
}

InvolutionShape check_grad_weight_args(const at::Tensor& grad_output, const at::Tensor& input,
                                       int64_t kernel_size, int64_t stride, int64_t dilation,
                                       int64_t padding, int64_t groups) {
  check_hyperparameters(kernel_size, stride, dilation, padding);
  check_tensor(grad_output, "grad_output", 4, input);
  check_tensor(input, "input", 4, grad_output);
  InvolutionShape shape = make_shape(input.sizes(), kernel_size, stride, dilation, padding);
  check_sizes(shape, groups);
  const std::vector<int64_t> expected{shape.B, shape.C, shape.Ho, shape.Wo};
  TORCH_CHECK_VALUE(grad_output.sizes() == c10::IntArrayRef(expected),
                    "involution: grad_output must have shape ", c10::IntArrayRef(expected),
                    ", got ", grad_output.sizes());
  return shape;
}

void check_channel_vector(const char* op, const std::optional<at::Tensor>& v, const char* name,
                          const at::Tensor& like, int64_t channels) {
  if (!v) return;
  TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == channels, op, ": ", name,
                    " must have shape (", channels, ",), got ", v->sizes());
  TORCH_CHECK_VALUE(v->scalar_type() == like.scalar_type() && v->device() == like.device(), op,
                    ": ", name, " must be ", like.scalar_type(), " on ", like.device(),
                    " like the input, got ", v->scalar_type(), " on ", v->device());
}

at::Tensor empty_output(const InvolutionShape& shape, const at::Tensor& input) {
  return at::empty({shape.B, shape.C, shape.Ho, shape.Wo},
                   input.options().memory_format(input.suggest_memory_format()));
}

at::Tensor empty_grad_input(const InvolutionShape& shape, const at::Tensor& grad_output) {
  return at::empty({shape.B, shape.C, shape.H, shape.W},
                   grad_output.options().memory_format(grad_output.suggest_memory_format()));
}

at::Tensor empty_grad_weight(const InvolutionShape& shape, const at::Tensor& input) {
  return at::empty({shape.B, shape.G, shape.K, shape.K, shape.Ho, shape.Wo},
                   input.options().memory_format(at::MemoryFormat::Contiguous));
}

namespace {

// Autocast follows conv2d's lower-precision policy: float32 arguments are cast to the autocast
// dtype (float64 ones are left alone), which also lets a float32 input meet the reduced-
// precision kernel that an autocast conv branch produces. Gradients flow back through the
// casts, so float32 leaves get float32 gradients.
template <c10::DeviceType device, c10::DispatchKey autocast_key>
at::Tensor involution_autocast(const at::Tensor& input, const at::Tensor& weight,
                               int64_t kernel_size, int64_t stride, int64_t dilation,
                               int64_t padding) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("involution_mm::involution", "")
                             .typed<decltype(involution_autocast<device, autocast_key>)>();
  return op.call(at::autocast::cached_cast(dtype, input, device),
                 at::autocast::cached_cast(dtype, weight, device), kernel_size, stride, dilation,
                 padding);
}

// Autograd: both gradients by the extension's kernels. In C++ rather than through
// torch.library.register_autograd, whose Python context and backward cost tens of
// microseconds a call, as much as the kernels take on RedNet's 7x7 stage at batch 1.
class InvolutionFunction : public torch::autograd::Function<InvolutionFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, int64_t kernel_size, int64_t stride,
                            int64_t dilation, int64_t padding) {
    ctx->save_for_backward({input, weight});
    ctx->saved_data["hyper"] = std::vector<int64_t>{kernel_size, stride, dilation, padding};
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("involution_mm::involution", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t,
                                                 int64_t, int64_t, int64_t)>();
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(input, weight, kernel_size, stride, dilation, padding);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto grad_input_op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("involution_mm::involution_grad_input", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::IntArrayRef, int64_t,
                              int64_t, int64_t, int64_t)>();
    static const auto grad_weight_op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("involution_mm::involution_grad_weight", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t,
                              int64_t, int64_t)>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &grad_output = grads[0];
    const auto h = ctx->saved_data["hyper"].toIntVector();
    at::Tensor grad_input, grad_weight;
    if (ctx->needs_input_grad(0))
      grad_input = grad_input_op.call(grad_output, weight, input.sizes().slice(2), h[0], h[1], h[2],
                                      h[3]);
    if (ctx->needs_input_grad(1))
      grad_weight = grad_weight_op.call(grad_output, input, h[0], h[1], h[2], h[3], weight.size(1));
    return {grad_input, grad_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor involution_autograd(const at::Tensor& input, const at::Tensor& weight,
                               int64_t kernel_size, int64_t stride, int64_t dilation,
                               int64_t padding) {
  return InvolutionFunction::apply(input, weight, kernel_size, stride, dilation, padding);
}

}  // namespace

TORCH_LIBRARY_IMPL(involution_mm, Autograd, m) { m.impl("involution", &involution_autograd); }

TORCH_LIBRARY_IMPL(involution_mm, AutocastCPU, m) {
  m.impl("involution",
         &involution_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(involution_mm, AutocastCUDA, m) {
  m.impl("involution",
         &involution_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

TORCH_LIBRARY(involution_mm, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def("involution(Tensor input, Tensor weight, int kernel_size, int stride=1, int dilation=1, "
        "int padding=0) -> Tensor",
        tags);
  m.def("involution_grad_input(Tensor grad_output, Tensor weight, int[2] input_size, "
        "int kernel_size, int stride, int dilation, int padding) -> Tensor",
        tags);
  m.def("involution_grad_weight(Tensor grad_output, Tensor input, int kernel_size, int stride, "
        "int dilation, int padding, int groups) -> Tensor",
        tags);
  // Inference only (no autograd, CPU): involution, then y * scale + shift per channel and
  // optionally ReLU, applied by the kernel while each block of output is in cache.
  m.def("involution_epilogue(Tensor input, Tensor weight, int kernel_size, int stride, "
        "int dilation, int padding, Tensor? scale, Tensor? shift, bool relu) -> Tensor",
        tags);
}

}  // namespace involution_mm

// Importing involution_mm._C loads this library and so registers the operators.
static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
