from edgedistill.distill.losses.base import kl, log_mix, register


@register("jsd", params={"beta": (0.5, 0.0, 1.0)},
          reference="Agarwal et al. 2024, GKD, generalized JSD(beta); here divided by beta(1-beta)")
def jsd(s_logp, t_logp, beta=0.5):
    """beta·KL(p || m) + (1-beta)·KL(q || m) with m = beta·p + (1-beta)·q, divided by beta·(1-beta).

    The division keeps the family continuous in beta: as beta -> 0 it tends to forward KL(p || q) and as
    beta -> 1 to reverse KL(q || p), and those are exactly what beta = 0 and beta = 1 compute.
    """
    if beta <= 0.0:
        return kl(t_logp, s_logp)
    if beta >= 1.0:
        return kl(s_logp, t_logp)
    m = log_mix(t_logp, s_logp, beta)
    return (beta * kl(t_logp, m) + (1 - beta) * kl(s_logp, m)) / (beta * (1 - beta))
