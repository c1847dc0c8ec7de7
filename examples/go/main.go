// Command slinky runs SchedMD's slurmrestd client use cases with Slinky's slurm-client
// (github.com/SlinkyProject/slurm-client, its generated api/v0044 package) through
// slurm-jwt-bridge's proxy: the requests carry your identity-provider token as
// "Authorization: Bearer"; the bridge swaps it for a Slurm token of your own cluster account.
//
//	export BRIDGE_URL=https://slurm.example.org IDP_TOKEN=eyJ...   # SLURM_API_VERSION=v0.0.44
//	go mod download
//	go run . job_ids
//	go run . job_states
//	go run . running_tasks
//	go run . submit_job [--name NAME] [--tasks N] [--script FILE] [--hold]
//	go run . submit_array_job [--array 1-100] [--hold]
//	go run . submit_hetjob [--hold]
//	go run . cancel_job JOB_ID
//	go run . signal_job [--signal SIGINT] JOB_ID
//	go run . update_job [--name NAME] [--tasks N] [--comment TEXT] JOB_ID
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	api "github.com/SlinkyProject/slurm-client/api/v0044"
)

const defaultScript = `#!/bin/bash
echo "job $SLURM_JOB_ID runs as $(id -un) on $(hostname)"
sleep 30
`

const arrayScript = `#!/bin/bash
echo "array task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID"
sleep 1
`

const hetjobScript = `#!/bin/bash
echo "heterogeneous job $SLURM_JOB_ID, components: $SLURM_HET_SIZE"
sleep 1
`

var environment = api.V0044StringArray{"PATH=/usr/local/bin:/usr/bin:/bin"}

func ptr[T any](v T) *T { return &v }

// newClient is slurm-client's generated client for the bridge at BRIDGE_URL. Slinky's own
// constructors put a Slurm token in X-SLURM-USER-TOKEN, which the bridge drops; here a request
// editor sends the identity-provider token as "Authorization: Bearer" instead.
func newClient() (*api.ClientWithResponses, error) {
	server := os.Getenv("BRIDGE_URL")
	if server == "" {
		server = "http://127.0.0.1:8000"
	}
	token := os.Getenv("IDP_TOKEN")
	if token == "" {
		return nil, errors.New("set IDP_TOKEN to an access token from your identity provider")
	}
	if v := os.Getenv("SLURM_API_VERSION"); v != "" && v != "v0.0.44" {
		return nil, fmt.Errorf("SLURM_API_VERSION=%s: this program uses slurm-client's api/v0044", v)
	}
	bearer := func(_ context.Context, req *http.Request) error {
		req.Header.Set("Authorization", "Bearer "+token)
		return nil
	}
	return api.NewClientWithResponses(
		strings.TrimRight(server, "/"),
		api.WithHTTPClient(&http.Client{Timeout: 60 * time.Second}),
		api.WithRequestEditorFn(bearer),
	)
}

// check turns any answer but 200 into an error carrying the body: the bridge's refusals are
// {"error", "error_description"}, slurmrestd's are {"errors": [...]}.
func check(status int, body []byte) error {
	if status == http.StatusOK {
		return nil
	}
	return fmt.Errorf("HTTP %d: %s", status, strings.TrimSpace(string(body)))
}

func warn(warnings *api.V0044OpenapiWarnings) {
	if warnings == nil {
		return
	}
	for _, w := range *warnings {
		if w.Description != nil {
			fmt.Fprintln(os.Stderr, "slurmrestd:", *w.Description)
		}
	}
}

func listJobs(ctx context.Context, c *api.ClientWithResponses) ([]api.V0044JobInfo, error) {
	resp, err := c.SlurmV0044GetJobsWithResponse(ctx, &api.SlurmV0044GetJobsParams{})
	if err != nil {
		return nil, err
	}
	if err := check(resp.StatusCode(), resp.Body); err != nil {
		return nil, err
	}
	return resp.JSON200.Jobs, nil
}

func contains(list []string, want string) bool {
	for _, item := range list {
		if item == want {
			return true
		}
	}
	return false
}

func states(job api.V0044JobInfo) []string {
	var out []string
	if job.JobState != nil {
		for _, s := range *job.JobState {
			out = append(out, string(s))
		}
	}
	return out
}

func jobID(job api.V0044JobInfo) int32 {
	if job.JobId == nil {
		return 0
	}
	return *job.JobId
}

// Use case: the job ids of all jobs.
func jobIDs(ctx context.Context, c *api.ClientWithResponses, _ []string) error {
	jobs, err := listJobs(ctx, c)
	for _, job := range jobs {
		fmt.Println(jobID(job))
	}
	return err
}

// Use case: the state of every job.
func jobStates(ctx context.Context, c *api.ClientWithResponses, _ []string) error {
	jobs, err := listJobs(ctx, c)
	for _, job := range jobs {
		fmt.Println(jobID(job), strings.Join(states(job), "+"))
	}
	return err
}

// Use case: the total number of tasks of all running jobs.
func runningTasks(ctx context.Context, c *api.ClientWithResponses, _ []string) error {
	jobs, err := listJobs(ctx, c)
	if err != nil {
		return err
	}
	var total int64
	for _, job := range jobs {
		t := job.Tasks // a "no val" struct: Number counts only when Set
		if contains(states(job), "RUNNING") && t != nil && t.Set != nil && *t.Set &&
			t.Number != nil {
			total += int64(*t.Number)
		}
	}
	fmt.Println(total)
	return nil
}

func submit(ctx context.Context, c *api.ClientWithResponses, req api.V0044JobSubmitReq) error {
	resp, err := c.SlurmV0044PostJobSubmitWithResponse(ctx, req)
	if err != nil {
		return err
	}
	if err := check(resp.StatusCode(), resp.Body); err != nil {
		return err
	}
	warn(resp.JSON200.Warnings)
	if resp.JSON200.JobId == nil {
		return fmt.Errorf("job/submit answered without a job id: %s", resp.Body)
	}
	fmt.Println(*resp.JSON200.JobId)
	return nil
}

// Use case: submit a batch job.
func submitJob(ctx context.Context, c *api.ClientWithResponses, args []string) error {
	fs := flag.NewFlagSet("submit_job", flag.ExitOnError)
	name := fs.String("name", "example-job", "job name")
	tasks := fs.Int("tasks", 1, "number of tasks")
	scriptFile := fs.String("script", "", "batch script file (default: a short sleep)")
	hold := fs.Bool("hold", false, "submit it held (it stays pending)")
	_ = fs.Parse(args)
	script := defaultScript
	if *scriptFile != "" {
		data, err := os.ReadFile(*scriptFile)
		if err != nil {
			return err
		}
		script = string(data)
	}
	return submit(ctx, c, api.V0044JobSubmitReq{Job: &api.V0044JobDescMsg{
		Name:                    ptr(*name),
		Tasks:                   ptr(int32(*tasks)),
		Hold:                    ptr(*hold),
		Script:                  ptr(script),
		CurrentWorkingDirectory: ptr("/tmp"),
		Environment:             &environment,
	}})
}

// Use case: submit an array job (tasks 1-100 by default).
func submitArrayJob(ctx context.Context, c *api.ClientWithResponses, args []string) error {
	fs := flag.NewFlagSet("submit_array_job", flag.ExitOnError)
	array := fs.String("array", "1-100", "task ids, like sbatch --array")
	hold := fs.Bool("hold", false, "submit it held (it stays pending)")
	_ = fs.Parse(args)
	return submit(ctx, c, api.V0044JobSubmitReq{Job: &api.V0044JobDescMsg{
		Name:                    ptr("example-array"),
		Array:                   ptr(*array),
		Hold:                    ptr(*hold),
		Script:                  ptr(arrayScript),
		CurrentWorkingDirectory: ptr("/tmp"),
		Environment:             &environment,
	}})
}

// Use case: submit a heterogeneous job of two components (the script goes in the first).
func submitHetjob(ctx context.Context, c *api.ClientWithResponses, args []string) error {
	fs := flag.NewFlagSet("submit_hetjob", flag.ExitOnError)
	hold := fs.Bool("hold", false, "submit it held (it stays pending)")
	_ = fs.Parse(args)
	component := func(script *string) api.V0044JobDescMsg {
		return api.V0044JobDescMsg{
			Name:                    ptr("example-hetjob"),
			Tasks:                   ptr(int32(1)),
			Hold:                    ptr(*hold),
			Script:                  script,
			CurrentWorkingDirectory: ptr("/tmp"),
			Environment:             &environment,
		}
	}
	components := api.V0044JobDescMsgList{component(ptr(hetjobScript)), component(nil)}
	return submit(ctx, c, api.V0044JobSubmitReq{Jobs: &components})
}

func deleteJob(ctx context.Context, c *api.ClientWithResponses, id string, signal *string) error {
	resp, err := c.SlurmV0044DeleteJobWithResponse(
		ctx, id, &api.SlurmV0044DeleteJobParams{Signal: signal})
	if err != nil {
		return err
	}
	if err := check(resp.StatusCode(), resp.Body); err != nil {
		return err
	}
	// Per-job failures (e.g. "Job can not be altered now") come back in "status", with 200.
	for _, s := range resp.JSON200.Status {
		if s.Error != nil && s.Error.Code != nil && *s.Error.Code != 0 && s.Error.Message != nil {
			return errors.New(*s.Error.Message)
		}
	}
	warn(resp.JSON200.Warnings)
	return nil
}

func jobArg(fs *flag.FlagSet) (string, error) {
	if fs.NArg() != 1 {
		return "", fmt.Errorf("usage: %s [flags] JOB_ID", fs.Name())
	}
	return fs.Arg(0), nil
}

// Use case: cancel a job.
func cancelJob(ctx context.Context, c *api.ClientWithResponses, args []string) error {
	fs := flag.NewFlagSet("cancel_job", flag.ExitOnError)
	_ = fs.Parse(args)
	id, err := jobArg(fs)
	if err != nil {
		return err
	}
	if err := deleteJob(ctx, c, id, nil); err != nil {
		return err
	}
	fmt.Println("cancelled", id)
	return nil
}

// Use case: send a signal (SIGINT by default) to a job.
func signalJob(ctx context.Context, c *api.ClientWithResponses, args []string) error {
	fs := flag.NewFlagSet("signal_job", flag.ExitOnError)
	signal := fs.String("signal", "SIGINT", "name (SIGINT, INT) or number")
	_ = fs.Parse(args)
	id, err := jobArg(fs)
	if err != nil {
		return err
	}
	if err := deleteJob(ctx, c, id, signal); err != nil {
		return fmt.Errorf("signal %s to %s failed: %w", *signal, id, err)
	}
	fmt.Println("sent", *signal, "to", id)
	return nil
}

// Use case: update a job's name, task count and comment; fields left nil are not sent.
func updateJob(ctx context.Context, c *api.ClientWithResponses, args []string) error {
	fs := flag.NewFlagSet("update_job", flag.ExitOnError)
	name := fs.String("name", "", "new job name")
	tasks := fs.Int("tasks", 0, "new number of tasks")
	comment := fs.String("comment", "", "new comment")
	_ = fs.Parse(args)
	id, err := jobArg(fs)
	if err != nil {
		return err
	}
	var changes api.V0044JobDescMsg
	var changed []string
	fs.Visit(func(f *flag.Flag) {
		changed = append(changed, f.Name)
		switch f.Name {
		case "name":
			changes.Name = name
		case "tasks":
			changes.Tasks = ptr(int32(*tasks))
		case "comment":
			changes.Comment = comment
		}
	})
	resp, err := c.SlurmV0044PostJobWithResponse(ctx, id, changes)
	if err != nil {
		return err
	}
	if err := check(resp.StatusCode(), resp.Body); err != nil {
		return err
	}
	sort.Strings(changed)
	fmt.Printf("updated %s: %s\n", id, strings.Join(changed, ", "))
	return nil
}

var useCases = map[string]func(context.Context, *api.ClientWithResponses, []string) error{
	"job_ids":          jobIDs,
	"job_states":       jobStates,
	"running_tasks":    runningTasks,
	"submit_job":       submitJob,
	"submit_array_job": submitArrayJob,
	"submit_hetjob":    submitHetjob,
	"cancel_job":       cancelJob,
	"signal_job":       signalJob,
	"update_job":       updateJob,
}

func main() {
	names := make([]string, 0, len(useCases))
	for name := range useCases {
		names = append(names, name)
	}
	sort.Strings(names)
	if len(os.Args) < 2 || useCases[os.Args[1]] == nil {
		fmt.Fprintf(os.Stderr, "usage: %s USE_CASE [args]\nuse cases: %s\n",
			os.Args[0], strings.Join(names, " "))
		os.Exit(2)
	}
	c, err := newClient()
	if err == nil {
		err = useCases[os.Args[1]](context.Background(), c, os.Args[2:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
