"""Cross-entropy over logits sharded by class across the ranks of a torch.distributed group
(vocabulary parallelism). Each rank holds a contiguous slice of the classes, the slices in rank
order, of any sizes. The forward all-gathers a few statistics per position (one collective:
each slice's log-sum-exp, the target's logit and weight where the target is in the slice, and
the sums label smoothing and probability targets need: two numbers for plain class indices),
from which every rank computes the same loss, combining the ranks in order; the backward needs
no collective, each rank's gradient being for its own slice, from the saved global log-sum-exp.

A rank learns its slice's first class from the gathered slice sizes. It sends the statistics
for the offset it found last time; when any rank's was wrong (the first call, or other sizes),
every rank sees it in the same gathered sizes and the target's terms are gathered again.
"""

import functools

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard

from ._autograd import REDUCTION_MEAN, REDUCTION_NONE, _acc_dtype
from ._ops import ops

_offsets = {}  # (group, slice size) -> the slice's first class, as last found


def _capped(x, cap):
    return x if cap == 0 else cap * torch.tanh(x / cap)


def _in_order(values, op):
    """op over the ranks' values (dim 0) in rank order: the same bits on every rank."""
    return functools.reduce(op, values.unbind(0))


def _total(values):
    """A sum that does not depend on the thread count (a scan is sequential)."""
    flat = values.reshape(-1).double()
    return torch.cumsum(flat, 0)[-1] if flat.numel() else flat.sum()


class Slice:
    """One rank's part of a call: logits (P, C_r), its class weights, the options."""

    def __init__(self, logits, target, weight, ignore_index, smoothing, lse_square_scale,
                 softcap, group):
        self.x, self.target, self.weight = logits, target, weight
        self.soft = target.is_floating_point()
        self.ignore_index, self.eps = ignore_index, smoothing
        self.z, self.cap, self.group = lse_square_scale, softcap, group
        self.acc = _acc_dtype(logits.dtype)
        self.classes = logits.shape[1]
        self.key = (group, self.classes)
        # the gathered statistics' columns, per position, as the options need them; the last
        # row holds the slice's own numbers
        weighted = weight is not None
        names = ["lse"]
        if not self.soft:
            names += ["target_logit"] + (["target_weight"] if weighted else [])
        if self.soft or self.eps:
            names.append("wz")
        if self.soft:
            names += ["wq", "wqz"]
        meta = ["size", "offset"] + (["weight_sum"] if weighted else [])
        self.column = {name: i for i, name in enumerate(names)}
        self.meta = {name: i for i, name in enumerate(meta)}
        self.width = max(len(names), len(meta))

    def logits(self):
        """The capped logits in the accumulation dtype, (P, C_r)."""
        return _capped(self.x.to(self.acc), self.cap)

    def class_weight(self):
        if self.weight is None:
            return torch.ones(self.classes, dtype=self.acc, device=self.x.device)
        return self.weight.to(self.acc)

    def local_lse(self):
        positions = self.x.shape[0]
        if self.classes == 0:
            return torch.full((positions,), -torch.inf, dtype=self.acc, device=self.x.device)
        ignored = torch.full((positions,), -100, dtype=torch.long, device=self.x.device)
        return ops().cross_entropy(self.x, ignored, None, REDUCTION_NONE, -100, 0.0, 0.0,
                                   self.cap)[1]

    def target_terms(self, offset):
        """The target's capped logit and weight where it lies in this slice, else 0."""
        local = self.target - offset
        inside = (self.target != self.ignore_index) & (local >= 0) & (local < self.classes)
        safe = torch.where(inside, local, 0)
        zeros = torch.zeros(self.target.shape, dtype=self.acc, device=self.x.device)
        if self.classes == 0:
            return zeros, zeros, inside, safe
        logit = _capped(self.x.gather(1, safe[:, None])[:, 0].to(self.acc), self.cap)
        weight = self.class_weight()[safe]
        return torch.where(inside, logit, zeros), torch.where(inside, weight, zeros), inside, safe

    def stats(self, offset):
        positions, column = self.x.shape[0], self.column
        s = torch.zeros(positions + 1, self.width, dtype=self.acc, device=self.x.device)
        s[:positions, column["lse"]] = self.local_lse()
        w = self.class_weight()
        if "wz" in column:
            z = self.logits()
            s[:positions, column["wz"]] = z @ w
            if self.soft:
                wq = self.target.to(self.acc) * w
                s[:positions, column["wq"]] = wq.sum(1)
                s[:positions, column["wqz"]] = (wq * z).sum(1)
        if not self.soft:
            for name, terms in zip(("target_logit", "target_weight"), self.target_terms(offset)):
                if name in column:
                    s[:positions, column[name]] = terms
        s[positions, self.meta["size"]] = self.classes
        s[positions, self.meta["offset"]] = offset
        if "weight_sum" in self.meta:
            s[positions, self.meta["weight_sum"]] = w.sum()
        return s


def _all_gather(t, group):
    world = dist.get_world_size(group)
    out = t.new_empty((world * t.shape[0], *t.shape[1:]))  # the ranks' tensors concatenated
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # torch < 2.13
    gather(out, t.contiguous(), group=group)
    return out.view(world, *t.shape)


class Combined:
    """The loss of every position and what the backward needs, from the gathered statistics."""

    def __init__(self, part, gathered):
        rows, meta = gathered[:, :-1], gathered[:, -1]
        sizes = meta[:, part.meta["size"]]
        self.classes = int(sizes.sum())
        self.offset = int(sizes[:dist.get_rank(part.group)].sum())
        guesses_right = torch.equal(meta[:, part.meta["offset"]], torch.cumsum(sizes, 0) - sizes)
        _offsets[part.key] = self.offset
        if not part.soft and not guesses_right:  # every rank sees the same sizes
            names = [n for n in ("target_logit", "target_weight") if n in part.column]
            terms = torch.stack(part.target_terms(self.offset)[:len(names)], 1)
            again = _all_gather(terms, part.group)
            rows = rows.clone()
            for k, name in enumerate(names):
                rows[..., part.column[name]] = again[..., k]
        lse_r = rows[..., part.column["lse"]]
        top = _in_order(lse_r, torch.maximum)
        shifted = torch.where(torch.isinf(top), top, _in_order(torch.exp(lse_r - top), torch.add))
        self.lse = torch.where(torch.isinf(top), top, top + torch.log(shifted))
        keep, eps_c = 1 - part.eps, part.eps / self.classes if self.classes else torch.inf
        weight_sum = (_in_order(meta[:, part.meta["weight_sum"]], torch.add)
                      if "weight_sum" in part.meta else float(self.classes))

        def total(name):
            return _in_order(rows[..., part.column[name]], torch.add)

        if part.soft:
            # sum_c w_c q'_c and sum_c w_c q'_c z_c, q' = keep q + eps_c
            self.a = keep * total("wq") + eps_c * weight_sum
            self.loss = self.a * self.lse - (keep * total("wqz") + eps_c * total("wz"))
            self.valid = self.target_weight = None
        else:
            self.valid = part.target != part.ignore_index
            target_logit = total("target_logit")
            self.target_weight = (total("target_weight") if "target_weight" in part.column
                                  else self.valid.to(target_logit.dtype))
            loss = self.target_weight * (self.lse - target_logit)
            if part.eps:
                loss = keep * loss + eps_c * (weight_sum * self.lse - total("wz"))
            self.loss = loss
            self.a = keep * self.target_weight + eps_c * weight_sum
        if part.z:
            self.loss = self.loss + part.z * self.lse.square()
            self.a = self.a + 2 * part.z * self.lse
        if self.valid is not None:
            self.loss = torch.where(self.valid, self.loss, 0)
            self.a = torch.where(self.valid, self.a, 0)
            bad = self.valid & ((part.target < 0) | (part.target >= self.classes))
            if part.x.is_cuda:
                torch._assert_async(~bad.any(), "Target is out of bounds")
            elif bad.any():
                first = part.target[bad][0].item()
                raise IndexError(f"Target {first} is out of bounds.")
        self.eps_c = eps_c


def gathered_stats(part):
    """The one collective of a forward."""
    return Combined(part, _all_gather(part.stats(_offsets.get(part.key, -1)), part.group))


def mean_divisor(soft, positions, target_weights):
    """'mean's divisor: the positions for probability targets, else the targets' weights."""
    return torch.tensor(float(positions), dtype=torch.float64) if soft else _total(target_weights)


def reduced(loss, reduction, divisor):
    if reduction == REDUCTION_NONE:
        return loss
    total = _total(loss)
    return total / divisor.to(total.device) if reduction == REDUCTION_MEAN else total


def grad_logits(part, combined, scale):
    """The gradient with respect to this rank's logits, (P, C_r) in their dtype, scale per
    position: computed in blocks of rows in the accumulation dtype, each written once."""
    x, out = part.x, torch.empty_like(part.x)
    if out.numel() == 0:
        return out
    w, keep, lse = part.class_weight(), 1 - part.eps, combined.lse[:, None]
    coef = (combined.a * scale)[:, None]
    if not part.soft:  # ignored positions: a is 0, and so is their smoothing term
        smoothing = torch.where(combined.valid, combined.eps_c * scale, 0)
        _, target_weight, inside, safe = part.target_terms(combined.offset)
        at_target = (-keep * target_weight * inside * scale)[:, None]
    rows = max(1, (1 << 18) // part.classes)  # 1 MB of float32 a block
    for start in range(0, x.shape[0], rows):
        block = slice(start, start + rows)
        z = _capped(x[block].to(part.acc), part.cap)
        g = torch.sub(z, lse[block]).exp_().mul_(coef[block])
        if part.soft:
            g.sub_(w * (keep * part.target[block].to(part.acc) + combined.eps_c)
                   * scale[block, None])
        else:
            if part.eps:
                g.addr_(smoothing[block], w, alpha=-1)
            g.scatter_add_(1, safe[block, None], at_target[block])
        if part.cap:
            g.mul_(1 - (z / part.cap).square_())
        out[block] = g
    return out


def upstream(grad, reduction, divisor, positions, acc):
    """The loss's gradient per position."""
    if reduction == REDUCTION_NONE:
        return grad.reshape(-1).to(acc)
    g = grad.reshape(()).double()
    g = g / divisor.to(g.device) if reduction == REDUCTION_MEAN else g
    return g.to(acc).expand(positions)


class CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, reduction, ignore_index, smoothing,
                lse_square_scale, softcap, group):
        ctx.options = (ignore_index, smoothing, lse_square_scale, softcap, group)
        part = Slice(logits, target, weight, *ctx.options)
        combined = gathered_stats(part)
        divisor = mean_divisor(part.soft, logits.shape[0], combined.target_weight)
        ctx.combined, ctx.reduction, ctx.divisor = combined, reduction, divisor
        ctx.save_for_backward(logits, target, weight)  # in-place changes are then caught
        return reduced(combined.loss, reduction, divisor).to(logits.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        part, combined = Slice(*ctx.saved_tensors, *ctx.options), ctx.combined
        scale = upstream(grad, ctx.reduction, ctx.divisor, part.x.shape[0], part.acc)
        d_logits = d_target = None
        if ctx.needs_input_grad[0]:
            d_logits = grad_logits(part, combined, scale)
        if ctx.needs_input_grad[1]:  # probability targets: (1 - eps) w (lse - z)
            d_target = ((1 - part.eps) * part.class_weight()
                        * (combined.lse[:, None] - part.logits()) * scale[:, None])
            d_target = d_target.to(part.target.dtype)
        return d_logits, d_target, None, None, None, None, None, None, None


class LinearCrossEntropy(torch.autograd.Function):
    """The loss of input (N, H) through this rank's slice of the head (C_r, H), a chunk of
    positions at a time (one collective each); the backward recomputes each chunk's logits and
    all-reduces the input's gradient, its one collective."""

    @staticmethod
    def forward(ctx, input, head, bias, target, weight, reduction, ignore_index, smoothing,
                lse_square_scale, softcap, group, rows):
        options = (weight, ignore_index, smoothing, lse_square_scale, softcap, group)
        ctx.chunks = []
        for start in range(0, input.shape[0], rows):
            part = Slice(torch.nn.functional.linear(input[start:start + rows], head, bias),
                         target[start:start + rows], *options)
            ctx.chunks.append((start, gathered_stats(part)))
        soft = target.is_floating_point()
        losses = [c.loss for _, c in ctx.chunks]
        loss = torch.cat(losses) if losses else input.new_zeros(0, dtype=_acc_dtype(input.dtype))
        divisor = None if soft else torch.cat([c.target_weight for _, c in ctx.chunks] or [loss])
        ctx.divisor = mean_divisor(soft, input.shape[0], divisor)
        ctx.options, ctx.reduction, ctx.rows = options, reduction, rows
        ctx.save_for_backward(input, head, bias, target)
        return reduced(loss, reduction, ctx.divisor).to(_acc_dtype(input.dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        input, head, bias, target = ctx.saved_tensors
        group = ctx.options[-1]
        scale = upstream(grad, ctx.reduction, ctx.divisor, input.shape[0], _acc_dtype(input.dtype))
        need_input, need_head, need_bias = ctx.needs_input_grad[:3]
        d_input = torch.zeros_like(input) if need_input else None
        d_head = torch.zeros_like(head, dtype=_acc_dtype(head.dtype)) if need_head else None
        d_bias = torch.zeros_like(bias, dtype=_acc_dtype(bias.dtype)) if need_bias else None
        for start, combined in ctx.chunks:
            x = input[start:start + ctx.rows]
            part = Slice(torch.nn.functional.linear(x, head, bias),
                         target[start:start + ctx.rows], *ctx.options)
            g = grad_logits(part, combined, scale[start:start + ctx.rows])
            if need_input:
                d_input[start:start + ctx.rows] = g @ head
            if need_head:
                d_head += g.T @ x
            if need_bias:
                d_bias += g.sum(0, dtype=d_bias.dtype)
        if need_input:
            dist.all_reduce(d_input, group=group)
        return (d_input, None if d_head is None else d_head.to(head.dtype),
                None if d_bias is None else d_bias.to(bias.dtype)) + (None,) * 9


def _movedim_last(input, target, class_dim):
    """Positions first and the classes last, (P, C_r), and the target to match."""
    rows = input.movedim(class_dim, -1)
    flat = rows.reshape(-1, rows.shape[-1])
    soft = target.is_floating_point()
    flat_target = target.movedim(class_dim, -1).reshape(flat.shape) if soft else target.reshape(-1)
    return rows.shape[:-1], flat, flat_target


def cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing,
                  lse_square_scale, softcap, group):
    """pyops.functional.cross_entropy with process_group: input (N, C_r, d1, ...) or (C_r),
    this rank's slice of the classes; target the global class indices, or this rank's slice of
    the probabilities."""
    _check_weight_slice(weight, input.shape[0 if input.dim() == 1 else 1])
    positions, flat, flat_target = _movedim_last(input, target, 0 if input.dim() == 1 else 1)
    loss = CrossEntropy.apply(flat, flat_target, weight, reduction, ignore_index,
                              label_smoothing, lse_square_scale, softcap, group)
    return loss.reshape(positions) if reduction == REDUCTION_NONE else loss


def linear_cross_entropy(input, head, bias, target, weight, reduction, ignore_index,
                         label_smoothing, lse_square_scale, softcap, group, rows):
    """pyops.functional.linear_cross_entropy with process_group: input (N, H) the same on every
    rank, head (C_r, H) and bias (C_r) this rank's slice; rows positions a chunk (0: 56 MB of
    logits)."""
    _check_weight_slice(weight, head.shape[0])
    if not rows:
        rows = max(1, (56 << 20) // (4 * max(1, head.shape[0])))
    return LinearCrossEntropy.apply(input, head, bias, target, weight, reduction, ignore_index,
                                    label_smoothing, lse_square_scale, softcap, group, rows)


def dtensor_cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing,
                          lse_square_scale, softcap):
    """cross_entropy of a DTensor input sharded on its class dim over a 1-D mesh, as torch's
    loss_parallel() takes it; target and weight full (tensors or replicated DTensors) or sharded
    as input. The loss is replicated."""
    class_dim = 0 if input.dim() == 1 else 1
    mesh = input.device_mesh
    if mesh.ndim != 1 or input.placements != (Shard(class_dim),):
        raise NotImplementedError(
            "cross_entropy: a DTensor input must be sharded on its class dim, "
            f"(Shard({class_dim}),) over a 1-D mesh; got {input.placements} over a {mesh.ndim}-D "
            "mesh")
    classes, rank = input.shape[class_dim], mesh.get_local_rank()
    size = -(-classes // mesh.size())  # torch.chunk's slices, as Shard makes them
    start = min(rank * size, classes)
    stop = min(start + size, classes)

    def local(t, dim):
        if isinstance(t, DTensor):
            if dim is not None and t.placements == (Shard(dim),):
                return t.to_local()
            if t.placements != (Replicate(),):
                raise NotImplementedError(f"cross_entropy: a DTensor target or weight must be "
                                          f"replicated or sharded as input, got {t.placements}")
            t = t.to_local()
        return t if t is None or dim is None else t.narrow(dim, start, stop - start)

    soft = target.is_floating_point()
    loss = cross_entropy(input.to_local(), local(target, class_dim if soft else None),
                         local(weight, 0), reduction, ignore_index, label_smoothing,
                         lse_square_scale, softcap, mesh.get_group())
    return DTensor.from_local(loss, mesh, [Replicate()], run_check=False)


def _check_weight_slice(weight, classes):
    if weight is not None and weight.shape != (classes,):
        raise RuntimeError(f"cross_entropy: weight must be this rank's slice of the class "
                           f"weights, ({classes},), got {tuple(weight.shape)}")
