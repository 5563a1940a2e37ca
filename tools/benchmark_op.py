"""Benchmark of the involution op against the unfold reference and a depthwise 7x7 conv.

Times forward and forward+backward on the RedNet-50 shapes (C = 64/128/256/512 at
56/28/14/7, G = C/16, K = 7) in blocks of back-to-back calls, interleaving the methods'
blocks in one process so that machine noise hits them alike, and reports medians, ratios,
the achieved bandwidth against the op's memory-traffic lower bound (as bytes/s, against a
large copy, and as a fraction of a copy of those bytes timed in the same rounds), the minor
page faults per call (memory that malloc maps afresh costs each call that touches it), and
the peak extra memory of forward+backward. On CPU each memory measurement runs in a fresh
process and reads the high-water mark of its resident memory, so scratch buffers that bypass
torch's allocator count too; on CUDA it is the growth of torch.cuda.max_memory_allocated.
Writes JSON with the machine, versions, command and the environment variables that change
what runs (ISA caps, malloc and huge-page settings).

    python tools/benchmark_op.py --out work_dirs/benchmark_op_cpu.json
    python tools/benchmark_op.py --device cuda --dtype float16 --out work_dirs/op_cuda_fp16.json
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]
KERNEL_SIZE = 7
GROUP_CHANNELS = 16
# op and depthwise conv adjacent: the op/dwconv ratio of a round compares blocks timed back to back
METHODS = ('involution_mm', 'depthwise_conv', 'unfold_reference')
# Forward only: a copy that reads and writes as many bytes as the op's forward must move.
BANDWIDTH_METHOD = 'lower_bound_copy'



def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='work_dirs/benchmark_op_cpu.json', help='JSON file')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=None,
                        help='default: 1 8 on CPU, 32 64 on CUDA')
    parser.add_argument('--shapes', nargs='+', default=None,
                        help='C:H pairs, e.g. 64:56 128:28 (default: the RedNet-50 shapes)')
    parser.add_argument('--repeats', type=int, default=15, help='timed blocks per method')
    parser.add_argument('--block-ms', type=float, default=20.0,
                        help='length of a timed block of back-to-back calls (at least one call)')
    parser.add_argument('--dtype', choices=['float32', 'float64', 'bfloat16', 'float16'],
                        default='float32')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory runs')
    # Internal: one memory measurement in a fresh process.
    parser.add_argument('--memory-probe', nargs=4, metavar=('METHOD', 'B', 'C', 'H'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error('--repeats must be at least 1')
    if args.block_ms <= 0:
        parser.error('--block-ms must be positive')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available (torch.cuda.is_available() '
                     f'is False; torch {torch.__version__})')
    if args.batch_sizes is None:
        args.batch_sizes = [32, 64] if args.device == 'cuda' else [1, 8]
    if any(b < 1 for b in args.batch_sizes):
        parser.error('--batch-sizes must be positive')
    args.shape_list = SHAPES if args.shapes is None else [_parse_shape(parser, s) for s in args.shapes]
    return args


def _parse_shape(parser, text):
    try:
        c, h = (int(v) for v in text.split(':'))
    except ValueError:
        parser.error(f'--shapes takes C:H pairs such as 64:56, got {text!r}')
    if c < GROUP_CHANNELS or c % GROUP_CHANNELS or h < 1:
        parser.error(f'--shapes: C must be a positive multiple of {GROUP_CHANNELS} and H '
                     f'positive, got {text!r}')
    return c, h


def make_case(method, batch, channels, size, dtype, requires_grad, device='cpu'):
    """Inputs of one method; every method computes the same multiply-adds."""
    from involution_mm.ops import involution, involution_reference
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    if method == BANDWIDTH_METHOD:
        elements = round(lower_bound_bytes(batch, channels, size, dtype) / 2
                         / torch.empty((), dtype=dtype).element_size())
        src, dst = randn(elements), torch.empty(elements, device=device, dtype=dtype)
        return (lambda a, b: b.copy_(a)), src, dst, None
    x = randn(batch, channels, size, size)
    if method == 'depthwise_conv':
        w = randn(channels, 1, KERNEL_SIZE, KERNEL_SIZE)
        fn = lambda a, b: F.conv2d(a, b, padding=KERNEL_SIZE // 2, groups=channels)  # noqa: E731
    else:
        groups = channels // GROUP_CHANNELS
        w = randn(batch, groups, KERNEL_SIZE, KERNEL_SIZE, size, size)
        op = involution if method == 'involution_mm' else involution_reference
        fn = lambda a, b: op(a, b, KERNEL_SIZE)  # noqa: E731
    x.requires_grad_(requires_grad)
    w.requires_grad_(requires_grad)
    return fn, x, w, randn(batch, channels, size, size)


def run_once(fn, x, w, grad_out, backward):
    if backward:
        x.grad = w.grad = None
        fn(x, w).backward(grad_out)
    else:
        with torch.no_grad():
            fn(x, w)


def time_methods(batch, channels, size, dtype, backward, repeats, block_ms, device='cpu'):
    """Seconds and minor page faults per call of each method (two dicts of lists), one sample
    per round: the methods are timed in blocks of back-to-back calls that last about
    ``block_ms`` each (as torch.utils.benchmark's blocked_autorange does), one block per
    method and round, so that the samples of one round were taken side by side. A single call
    of a 50 us op right after the 100x slower unfold reference would time the cache misses and
    page faults that the reference leaves behind, not the op."""
    methods = METHODS if backward else METHODS + (BANDWIDTH_METHOD,)
    cases = {m: make_case(m, batch, channels, size, dtype, backward, device) for m in methods}
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

    def block(case, calls):
        sync()
        faults = minor_page_faults()
        start = time.perf_counter()
        for _ in range(calls):
            run_once(*case, backward)
        sync()
        return time.perf_counter() - start, minor_page_faults() - faults

    calls = {}
    for method, case in cases.items():  # warm-up, and the calls per block
        per_call = min(block(case, 1)[0] for _ in range(2))
        calls[method] = max(1, round(block_ms / 1e3 / per_call))
    samples = {m: [] for m in methods}
    faults = {m: [] for m in methods}
    for _ in range(repeats):
        for method, case in cases.items():
            seconds, block_faults = block(case, calls[method])
            samples[method].append(seconds / calls[method])
            faults[method].append(block_faults / calls[method])
    return samples, faults


def minor_page_faults():
    """Minor page faults of this process so far. A call whose results land in memory that the
    allocator has just taken from the OS (glibc's malloc maps large blocks afresh and returns
    them when freed) first faults every page in, which can cost more than its arithmetic:
    the same call then reads several times slower than in a run whose allocator state lets it
    reuse memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def paired_ratio(samples, numerator, denominator):
    """Median over rounds of the ratio of two methods' times in the same round: this shared
    machine's load changes within seconds (the same depthwise conv measured 3 and 7 ms in one
    minute), and the ratio of one round is what both methods met alike."""
    return statistics.median(a / b for a, b in zip(samples[numerator], samples[denominator]))


def proc_status_bytes(key):
    """A memory figure of this process from /proc/self/status, e.g. 'VmRSS' (resident now)."""
    with open('/proc/self/status') as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith(key + ':'))
    return kib * 1024


def max_rss_bytes():
    """High-water mark of this process's resident memory. VmHWM, not ru_maxrss: Linux carries
    ru_maxrss over from the parent across exec, VmHWM belongs to the new address space."""
    return proc_status_bytes('VmHWM')


def memory_probe(method, batch, channels, size, dtype):
    """Extra peak resident memory of one forward+backward beyond the inputs, outputs and
    gradients that any implementation must hold."""
    # One call on a tiny case first: the first call of a process sets up the autograd engine,
    # OpenMP and the dispatcher's caches, memory no call after it asks for again.
    run_once(*make_case(method, 1, GROUP_CHANNELS, 8, dtype, True), True)
    fn, x, w, grad_out = make_case(method, batch, channels, size, dtype, True)
    needed = 2 * x.numel() * x.element_size() + w.numel() * w.element_size()  # out, dx, dw
    # Touch the results' worth of memory once so that the high-water mark already covers them.
    torch.empty(needed // x.element_size() + 1, dtype=dtype).fill_(0)
    before = max_rss_bytes()
    run_once(fn, x, w, grad_out, True)
    return max(0, max_rss_bytes() - before)


def measure_memory(method, batch, channels, size, args):
    if args.device == 'cuda':
        fn, x, w, grad_out = make_case(method, batch, channels, size, getattr(torch, args.dtype),
                                       True, 'cuda')
        needed = 2 * x.numel() * x.element_size() + w.numel() * w.element_size()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
        run_once(fn, x, w, grad_out, True)
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - before - needed)
    cmd = [sys.executable, os.path.abspath(__file__), '--dtype', args.dtype,
           '--memory-probe', method, str(batch), str(channels), str(size)]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def lower_bound_bytes(batch, channels, size, dtype):
    """Forward, stride 1: read x, write out, read the weight once (reference.md)."""
    elem = torch.empty((), dtype=dtype).element_size()
    per_output = elem * (2 + KERNEL_SIZE ** 2 / GROUP_CHANNELS)
    return batch * channels * size * size * per_output


def copy_bandwidth(dtype, device='cpu'):
    """Bytes/s of a large tensor copy (read + write): what memory can give on this machine."""
    src = torch.randn(256 * 2 ** 20 // 4).to(device=device, dtype=dtype)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

    def timed():
        sync()
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        return time.perf_counter() - start

    timed()
    return 2 * src.numel() * src.element_size() / min(timed() for _ in range(10))


#: the variables, besides glibc's MALLOC_*, that change which code runs or how memory is reused
TIMING_ENVIRONMENT = ('ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA', 'MKL_ENABLE_INSTRUCTIONS',
                      'OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'THP_MEM_ALLOC_ENABLE',
                      'TORCHINDUCTOR_CACHE_DIR', 'LD_PRELOAD')

#: the /proc/cpuinfo flags that say which vector paths a CPU has
SIMD_FLAGS = ('avx', 'avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_bf16',
              'amx_tile')


def cpu_identity():
    """The first CPU of /proc/cpuinfo: model name, vendor, family and model numbers (a VM's
    model name may say no more than "AMD EPYC"), and which of :data:`SIMD_FLAGS` it has."""
    fields = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(':')
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get('flags', '').split())
    return {'cpu': fields.get('model name') or platform.processor(),
            'cpu_vendor': fields.get('vendor_id'), 'cpu_family': fields.get('cpu family'),
            'cpu_model': fields.get('model'), 'simd': [f for f in SIMD_FLAGS if f in flags]}


def machine_info(device):
    import involution_mm
    info = {
        'platform': platform.platform(), **cpu_identity(), 'logical_cores': os.cpu_count(),
        'torch_threads': torch.get_num_threads(), 'python': platform.python_version(),
        'torch': torch.__version__, 'involution_mm': involution_mm.__version__,
        'kernel_isa': torch.ops.involution_mm.cpu_kernel_isa(),
        # ATen's own kernels' ISA (ATEN_CPU_CAPABILITY caps it); oneDNN and MKL pick their own
        'aten_cpu_capability': torch.backends.cpu.get_cpu_capability(),
        'environment': {k: v for k, v in sorted(os.environ.items())
                        if k in TIMING_ENVIRONMENT or k.startswith('MALLOC_')},
    }
    if device == 'cuda':
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2 ** 30,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def write_json(path, result):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result, f, indent=2)


def format_table(rows):
    head = ('| B | C | HxW | op fwd ms | unfold fwd ms | dwconv fwd ms | op fwd+bwd ms | '
            'unfold fwd+bwd ms | dwconv fwd+bwd ms | unfold/op fwd | unfold/op f+b | '
            'op/dwconv fwd | op/dwconv f+b | op GB/s (bound) | of same-bytes copy | op extra MiB | '
            'unfold extra MiB | x+w MiB | fwd page faults/call op, dwconv |')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for r in rows:
        f, fb, mem = r['forward_ms'], r['forward_backward_ms'], r.get('extra_peak_mib', {})
        faults = r['forward_page_faults_per_call']
        lines.append(
            f"| {r['batch']} | {r['channels']} | {r['size']}x{r['size']} | "
            f"{f['involution_mm']:.2f} | {f['unfold_reference']:.1f} | {f['depthwise_conv']:.2f} | "
            f"{fb['involution_mm']:.2f} | {fb['unfold_reference']:.1f} | {fb['depthwise_conv']:.2f} | "
            f"{r['speedup_vs_unfold_forward']:.1f}x | {r['speedup_vs_unfold_forward_backward']:.1f}x | "
            f"{r['ratio_to_dwconv_forward']:.2f} | {r['ratio_to_dwconv_forward_backward']:.2f} | "
            f"{r['achieved_gbps']:.1f} | {r['fraction_of_same_bytes_copy']:.0%} | "
            f"{mem.get('involution_mm', float('nan')):.1f} | "
            f"{mem.get('unfold_reference', float('nan')):.1f} | {r['input_plus_weight_mib']:.1f} | "
            f"{faults['involution_mm']:.0f}, {faults['depthwise_conv']:.0f} |")
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.memory_probe:
        method, batch, channels, size = args.memory_probe
        print(memory_probe(method, int(batch), int(channels), int(size), dtype))
        return
    import involution_mm
    if not involution_mm.ops.HAS_EXTENSION:
        raise SystemExit('benchmark_op: the compiled extension is missing; build it first '
                         '(make env, or pip install -e . --no-build-isolation)')
    rows = []
    for batch in args.batch_sizes:
        for channels, size in args.shape_list:
            fwd, fwd_faults = time_methods(batch, channels, size, dtype, False, args.repeats,
                                           args.block_ms, args.device)
            fb, fb_faults = time_methods(batch, channels, size, dtype, True, args.repeats,
                                         args.block_ms, args.device)
            copy_s = fwd.pop(BANDWIDTH_METHOD)
            fwd_faults.pop(BANDWIDTH_METHOD)
            fwd_ms = {m: statistics.median(v) * 1e3 for m, v in fwd.items()}
            bound = lower_bound_bytes(batch, channels, size, dtype)
            elem = torch.empty((), dtype=dtype).element_size()
            x_bytes = batch * channels * size * size * elem
            w_bytes = x_bytes * KERNEL_SIZE ** 2 // GROUP_CHANNELS
            row = {
                'batch': batch, 'channels': channels, 'size': size,
                'groups': channels // GROUP_CHANNELS, 'kernel_size': KERNEL_SIZE,
                'forward_ms': fwd_ms,
                'forward_backward_ms': {m: statistics.median(v) * 1e3 for m, v in fb.items()},
                'forward_page_faults_per_call': {m: statistics.median(v)
                                                 for m, v in fwd_faults.items()},
                'forward_backward_page_faults_per_call': {m: statistics.median(v)
                                                          for m, v in fb_faults.items()},
                'speedup_vs_unfold_forward': paired_ratio(fwd, 'unfold_reference', 'involution_mm'),
                'speedup_vs_unfold_forward_backward':
                    paired_ratio(fb, 'unfold_reference', 'involution_mm'),
                'ratio_to_dwconv_forward': paired_ratio(fwd, 'involution_mm', 'depthwise_conv'),
                'ratio_to_dwconv_forward_backward':
                    paired_ratio(fb, 'involution_mm', 'depthwise_conv'),
                'lower_bound_bytes_forward': bound,
                'achieved_gbps': bound / (fwd_ms['involution_mm'] / 1e3) / 1e9,
                'fraction_of_same_bytes_copy': statistics.median(
                    c / op for c, op in zip(copy_s, fwd['involution_mm'])),
                'input_plus_weight_mib': (x_bytes + w_bytes) / 2 ** 20,
            }
            if not args.no_memory:
                row['extra_peak_mib'] = {
                    m: measure_memory(m, batch, channels, size, args) / 2 ** 20
                    for m in ('involution_mm', 'unfold_reference')}
            rows.append(row)
            print(f'B={batch} C={channels} {size}x{size}: op fwd {row["forward_ms"]["involution_mm"]:.2f} ms, '
                  f'dwconv {row["forward_ms"]["depthwise_conv"]:.2f} ms, '
                  f'unfold {row["forward_ms"]["unfold_reference"]:.1f} ms', flush=True)
    result = {
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'machine': machine_info(args.device), 'device': args.device, 'dtype': args.dtype,
        'repeats': args.repeats, 'block_ms': args.block_ms,
        'copy_bandwidth_gbps': copy_bandwidth(dtype, args.device) / 1e9,
        'notes': 'times are medians over rounds of the per-call time in a block of '
                 'back-to-back calls (about block_ms, at least one call; each round times one '
                 'block per method); ratios are medians over rounds of the ratio within a '
                 'round; extra_peak_mib is the growth of the '
                 'resident-memory high-water mark (CPU) or of max_memory_allocated (CUDA) '
                 'during one forward+backward beyond the inputs, output and gradients; '
                 'achieved_gbps = forward lower-bound bytes '
                 '(x read, out written, weight read once) / forward time; '
                 '*_page_faults_per_call = median over rounds of the minor page faults per '
                 'call in a block (the pages that calls fault in count in their times); '
                 'fraction_of_same_bytes_copy = median over rounds of the time of a tensor '
                 'copy moving those bytes (cache-resident where they fit, unlike the large '
                 'copy of copy_bandwidth_gbps) / the forward time, timed in the same rounds',
        'results': rows,
    }
    write_json(args.out, result)
    print(format_table(rows))
    print(f"copy bandwidth {result['copy_bandwidth_gbps']:.1f} GB/s; wrote {args.out}")


if __name__ == '__main__':
    main()
