package programs

import "strconv"

// The tables below are what the AWS, GCP and Azure programs report as a machine's gpu and
// hourlyPrice outputs. Their clouds' APIs do not return a price with the machine, so the
// prices are on-demand list prices in USD per hour (Linux, us-east-1 / us-central1 /
// eastus), rounded, as published when the tables were written. A spot machine reports the
// on-demand price too: an upper bound of what it costs. A configured HourlyPrice overrides
// the table; a type missing from it reports 0 ("unknown").

// gpuModel is a machine type's GPUs, as the gpu output says them.
type gpuModel struct {
	count int
	model string // "NVIDIA A10G (24 GB)"
}

func (g gpuModel) String() string {
	if g.count == 0 {
		return g.model
	}
	return strconv.Itoa(g.count) + "x " + g.model
}

// awsInstanceGPUs are the GPUs of common EC2 GPU instance types.
var awsInstanceGPUs = map[string]gpuModel{
	"g4dn.xlarge":   {1, "NVIDIA T4 (16 GB)"},
	"g4dn.2xlarge":  {1, "NVIDIA T4 (16 GB)"},
	"g4dn.4xlarge":  {1, "NVIDIA T4 (16 GB)"},
	"g4dn.12xlarge": {4, "NVIDIA T4 (16 GB)"},
	"g5.xlarge":     {1, "NVIDIA A10G (24 GB)"},
	"g5.2xlarge":    {1, "NVIDIA A10G (24 GB)"},
	"g5.4xlarge":    {1, "NVIDIA A10G (24 GB)"},
	"g5.12xlarge":   {4, "NVIDIA A10G (24 GB)"},
	"g5.48xlarge":   {8, "NVIDIA A10G (24 GB)"},
	"g6.xlarge":     {1, "NVIDIA L4 (24 GB)"},
	"g6.2xlarge":    {1, "NVIDIA L4 (24 GB)"},
	"g6.12xlarge":   {4, "NVIDIA L4 (24 GB)"},
	"g6e.xlarge":    {1, "NVIDIA L40S (48 GB)"},
	"p3.2xlarge":    {1, "NVIDIA V100 (16 GB)"},
	"p3.8xlarge":    {4, "NVIDIA V100 (16 GB)"},
	"p4d.24xlarge":  {8, "NVIDIA A100 (40 GB)"},
	"p5.48xlarge":   {8, "NVIDIA H100 (80 GB)"},
}

// awsHourlyPrices are on-demand list prices of EC2 instance types (us-east-1, Linux).
var awsHourlyPrices = map[string]float64{
	"g4dn.xlarge":   0.526,
	"g4dn.2xlarge":  0.752,
	"g4dn.4xlarge":  1.204,
	"g4dn.12xlarge": 3.912,
	"g5.xlarge":     1.006,
	"g5.2xlarge":    1.212,
	"g5.4xlarge":    1.624,
	"g5.12xlarge":   5.672,
	"g5.48xlarge":   16.288,
	"g6.xlarge":     0.8048,
	"g6.2xlarge":    0.9776,
	"g6.12xlarge":   4.6016,
	"g6e.xlarge":    1.861,
	"p3.2xlarge":    3.06,
	"p3.8xlarge":    12.24,
	"p4d.24xlarge":  21.96, // approximate: AWS has cut P4 prices more than once
}

// gcpAcceleratorModels name GCP accelerator types.
var gcpAcceleratorModels = map[string]string{
	"nvidia-tesla-t4":   "NVIDIA T4 (16 GB)",
	"nvidia-tesla-p4":   "NVIDIA P4 (8 GB)",
	"nvidia-tesla-p100": "NVIDIA P100 (16 GB)",
	"nvidia-tesla-v100": "NVIDIA V100 (16 GB)",
	"nvidia-l4":         "NVIDIA L4 (24 GB)",
	"nvidia-tesla-a100": "NVIDIA A100 (40 GB)",
	"nvidia-a100-80gb":  "NVIDIA A100 (80 GB)",
	"nvidia-h100-80gb":  "NVIDIA H100 (80 GB)",
}

// gcpMachinePrices are on-demand prices of GCP machine types (us-central1). For the
// accelerator-optimized types (a2-, a3-, g2-) the price includes their GPUs.
var gcpMachinePrices = map[string]float64{
	"n1-standard-4":  0.19,
	"n1-standard-8":  0.38,
	"n1-standard-16": 0.76,
	"n1-standard-32": 1.52,
	"g2-standard-4":  0.71,
	"g2-standard-8":  0.85,
	"g2-standard-12": 1.00,
	"g2-standard-16": 1.15,
	"g2-standard-24": 2.00,
	"a2-highgpu-1g":  3.67,
	"a2-highgpu-2g":  7.35,
	"a2-ultragpu-1g": 5.07,
}

// gcpAcceleratorPrices are on-demand prices of one GPU attached to an N1 machine (us-central1).
var gcpAcceleratorPrices = map[string]float64{
	"nvidia-tesla-t4":   0.35,
	"nvidia-tesla-p4":   0.60,
	"nvidia-tesla-p100": 1.46,
	"nvidia-tesla-v100": 2.48,
}

// azureVMSizeGPUs are the GPUs of common Azure GPU VM sizes.
var azureVMSizeGPUs = map[string]gpuModel{
	"Standard_NC4as_T4_v3":     {1, "NVIDIA T4 (16 GB)"},
	"Standard_NC8as_T4_v3":     {1, "NVIDIA T4 (16 GB)"},
	"Standard_NC16as_T4_v3":    {1, "NVIDIA T4 (16 GB)"},
	"Standard_NC64as_T4_v3":    {4, "NVIDIA T4 (16 GB)"},
	"Standard_NC6s_v3":         {1, "NVIDIA V100 (16 GB)"},
	"Standard_NC12s_v3":        {2, "NVIDIA V100 (16 GB)"},
	"Standard_NC24s_v3":        {4, "NVIDIA V100 (16 GB)"},
	"Standard_NC24ads_A100_v4": {1, "NVIDIA A100 (80 GB)"},
	"Standard_NC48ads_A100_v4": {2, "NVIDIA A100 (80 GB)"},
	"Standard_NC96ads_A100_v4": {4, "NVIDIA A100 (80 GB)"},
	"Standard_NC40ads_H100_v5": {1, "NVIDIA H100 NVL (94 GB)"},
}

// azureHourlyPrices are pay-as-you-go prices of Azure VM sizes (East US, Linux).
var azureHourlyPrices = map[string]float64{
	"Standard_NC4as_T4_v3":     0.526,
	"Standard_NC8as_T4_v3":     0.752,
	"Standard_NC16as_T4_v3":    1.204,
	"Standard_NC64as_T4_v3":    4.352,
	"Standard_NC6s_v3":         3.06,
	"Standard_NC12s_v3":        6.12,
	"Standard_NC24s_v3":        12.24,
	"Standard_NC24ads_A100_v4": 3.67,
	"Standard_NC48ads_A100_v4": 7.35,
	"Standard_NC96ads_A100_v4": 14.69,
}

// priceOr returns override when set, else the table's price of key, else 0.
func priceOr(override float64, table map[string]float64, key string) float64 {
	if override > 0 {
		return override
	}
	return table[key]
}
