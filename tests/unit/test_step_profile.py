"""The step profiler that trainer_throughput uses to say where a GPU step's time goes."""

import pytest
import torch

from benchmarks.step_profile import family, format_profile, profile_steps


@pytest.mark.parametrize(
    "kernel, expected",
    [
        # Kernel names as they appear in H100 profiles of a bf16 transformer step.
        (
            "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas",
            "matmul",
        ),
        ("nvjet_tst_192x192_64x3_2x1_v_bz_coopB_TNT", "matmul"),
        (
            "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64, 128>>",
            "attention",
        ),
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
        (
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>",
            "optimizer+clip",
        ),
        ("triton_per_fused_native_layer_norm_native_layer_norm_backward_7", "triton fused"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::bfloat16_copy_kernel_cuda>", "copy/cast"),
        ("Memcpy HtoD (Pageable -> Device)", "copy/cast"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "elementwise"),
        ("void (anonymous namespace)::cunn_SoftMaxForward<4, float>", "norm/softmax"),
        (
            "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float>>>",
            "reduction",
        ),
        ("ncclDevKernel_AllGather_RING_LL", "other"),
    ],
)
def test_kernels_fall_into_the_expected_family(kernel, expected):
    assert family(kernel) == expected


def test_a_profiled_cpu_loop_is_summarised_by_family():
    weight = torch.randn(256, 256)
    inputs = torch.randn(64, 256)

    def run_steps(count):
        for _ in range(count):
            torch.nn.functional.gelu(inputs @ weight).sum()

    summary = profile_steps(run_steps, steps=4, step_s=0.01, device=torch.device("cpu"), top=5)

    assert summary["profiled_steps"] == 4 and summary["counted"] == "cpu ops"
    assert summary["families"]["matmul"]["ms_per_step"] > 0
    assert sum(entry["share"] for entry in summary["families"].values()) == pytest.approx(1.0)
    times = [entry["ms_per_step"] for entry in summary["top"]]
    assert times == sorted(times, reverse=True) and len(times) <= 5
    # gelu, mm and sum run once per step.
    calls = {entry["name"]: entry["calls_per_step"] for entry in summary["top"]}
    assert calls.get("aten::mm") == 1
    assert "matmul" in format_profile(summary)


def test_sync_check_runs_both_trainers_steps():
    """The GPU sync check must keep running where there is no GPU, so it has not rotted when one is lent."""
    from benchmarks.sync_check import main

    main(["--steps", "1", "--batch-size", "4"])
