"""From a laptop to a GPU cluster: cluster launch configs checked offline, and mtft-ray commands as Ray jobs.

* :mod:`mtft_ray.cluster.check` — ``mtft-ray cluster check cluster/aws.yaml --sweep SWEEP``: Ray's
  schema and preparation, EC2 instance types resolved offline (moto), GPUs per node type, and the
  trials a sweep would run at once on the cluster.
* :mod:`mtft_ray.cluster.jobs` — ``mtft-ray submit [--follow] -- sweep SWEEP``, ``jobs``, ``logs``,
  ``stop`` on Ray's job server.

Example:
    mtft-ray cluster check cluster/aws.yaml --sweep sweeps/quickstart.yaml 'resources={cpu: 4, gpu: 1}'
    mtft-ray submit --address http://127.0.0.1:8265 --follow -- sweep sweeps/quickstart.yaml
"""
